//! Backups of a running single node and restores (issue 24 §2): snapshots taken while threads
//! mint and revoke hold every write acknowledged before the backup began and open with the
//! master key; a restore refuses a target a running service holds; PostgreSQL points elsewhere.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use tessera_core::TokenId;
use tessera_store::{restore, Error, Store};

/// Writes acknowledged so far: (token recorded, revoked too), in order.
type Acked = Arc<Mutex<Vec<(TokenId, bool)>>>;

#[test]
fn backups_taken_during_mints_and_revocations_hold_every_acknowledged_write() {
    let db = Db::file();
    let store = db.open();
    store.rotate().unwrap();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let tid = store.record_token(new_token(&store, &format!("w{w}"), None)).unwrap().tid;
                    let revoke = i % 3 == 0;
                    if revoke {
                        store.revoke_token(tid).unwrap();
                    }
                    acked.lock().unwrap().push((tid, revoke));
                    i += 1;
                }
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut taken = Vec::new();
    for n in 0..5 {
        // Wait until the writers have done something since the last backup.
        let seen = acked.lock().unwrap().len();
        while acked.lock().unwrap().len() < seen + 20 {
            std::thread::yield_now();
        }
        let before: Vec<(TokenId, bool)> = acked.lock().unwrap().clone();
        let path = dir.path().join(format!("snap-{n}.redb"));
        let snap = store.backup_to(&path).unwrap();
        assert!(snap.bytes > 0);
        taken.push((snap, before));
    }
    stop.store(true, Ordering::Release);
    for w in writers {
        w.join().unwrap();
    }
    let total = acked.lock().unwrap().len();
    for (snap, before) in taken {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&snap.path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "a snapshot holds every record: owner only");
        }
        let copy = Store::open(&snap.path, master()).unwrap();
        assert_eq!(copy.last_applied(), snap.last_change);
        for (tid, revoked) in &before {
            let record = copy.token(tid).unwrap().unwrap_or_else(|| panic!("acknowledged {tid} is missing"));
            if *revoked {
                assert!(
                    record.revoked_at.is_some() && copy.is_token_revoked(tid),
                    "revocation of {tid} lost"
                );
            }
        }
        // The snapshot goes on as a store of its own.
        let tid = copy.record_token(new_token(&copy, "after", None)).unwrap().tid;
        assert!(copy.revoke_token(tid).unwrap()[0].seq > snap.last_change);
    }
    assert!(total > 100, "the writers wrote during the backups");
    // A wrong master key does not open a snapshot.
    let wrong = tessera_store::MasterKey::from_bytes([9; 32]);
    let any = dir.path().join("snap-0.redb");
    assert!(matches!(Store::open(&any, wrong), Err(Error::WrongMasterKey)));
}

#[test]
fn a_backup_never_replaces_a_file_and_postgres_points_to_its_tools() {
    let db = Db::file();
    let store = db.open();
    store.rotate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exists.redb");
    std::fs::write(&path, b"keep me").unwrap();
    assert!(store.backup_to(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    assert!(!dir.path().join("exists.redb.partial").exists());

    let pg = Db::postgres().open();
    let err = pg.backup_to(dir.path().join("pg.redb")).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)) && err.to_string().contains("pg_dump"), "{err}");
    assert!(!dir.path().join("pg.redb").exists());
}

#[test]
fn a_restore_refuses_a_running_target_and_sets_the_old_one_aside() {
    let db = Db::file();
    let store = db.open();
    store.rotate().unwrap();
    let kept = store.record_token(new_token(&store, "alice", None)).unwrap().tid;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.redb");
    let taken = store.backup_to(&snap).unwrap();
    let later = store.record_token(new_token(&store, "alice", None)).unwrap().tid;
    store.revoke_token(kept).unwrap();

    // The service holds the target: refused, nothing changed.
    let err = restore(&snap, &db.path(), &master()).unwrap_err();
    assert!(matches!(err, Error::InUse(_)), "{err}");
    assert!(store.is_token_revoked(&kept) && store.token(&later).unwrap().is_some());
    drop(store);

    // A wrong master key: refused before the target is touched.
    let wrong = tessera_store::MasterKey::from_bytes([9; 32]);
    assert!(matches!(restore(&snap, &db.path(), &wrong), Err(Error::WrongMasterKey)));
    assert!(db.open().token(&later).unwrap().is_some());

    let done = restore(&snap, &db.path(), &master()).unwrap();
    assert_eq!(done.last_change, taken.last_change);
    let back = db.open();
    assert!(back.token(&later).unwrap().is_none(), "the restored store is the snapshot");
    assert!(!back.is_token_revoked(&kept), "the snapshot predates the revocation");
    // The replaced database was set aside, not deleted.
    let aside: Vec<_> = std::fs::read_dir(db.path().parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("tessera.redb.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1);
}

/// The databases set aside next to `target` (`<name>.replaced-…`), their bytes.
fn set_aside(target: &std::path::Path) -> Vec<Vec<u8>> {
    let prefix = format!("{}.replaced-", target.file_name().unwrap().to_string_lossy());
    let mut found: Vec<_> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    found.sort();
    found
}

/// Review of issue 24, F2: two restores within one second renamed both earlier databases to
/// the same `.replaced-<seconds>` name, and the second rename replaced the first.
#[test]
fn two_restores_back_to_back_keep_both_earlier_databases() {
    let db = Db::file();
    let store = db.open();
    store.rotate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.redb");
    store.backup_to(&snap).unwrap();
    let later = store.record_token(new_token(&store, "alice", None)).unwrap().tid;
    drop(store);
    restore(&snap, &db.path(), &master()).unwrap();
    restore(&snap, &db.path(), &master()).unwrap();
    // Both earlier databases are kept: the live one (with the later token) and the first restore.
    let prefix = format!("{}.replaced-", db.path().file_name().unwrap().to_string_lossy());
    let aside: Vec<_> = std::fs::read_dir(db.path().parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert_eq!(aside.len(), 2, "{aside:?}");
    let holding_later =
        aside.iter().filter(|p| Store::open(p, master()).unwrap().token(&later).unwrap().is_some()).count();
    assert_eq!(holding_later, 1, "the live database before the restores is kept");
}

/// Review of issue 24, F3: an empty file was taken as a snapshot (opened with create, it became
/// a fresh empty store that replaced the live one).
#[test]
fn restoring_an_empty_file_fails_and_leaves_the_target_alone() {
    let db = Db::file();
    let store = db.open();
    store.rotate().unwrap();
    let kept = store.record_token(new_token(&store, "alice", None)).unwrap().tid;
    drop(store);
    let before = std::fs::read(db.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    assert!(restore(&empty, &db.path(), &master()).is_err(), "an empty file is no snapshot");
    assert_eq!(std::fs::read(&empty).unwrap(), b"", "the input is not written");
    assert_eq!(std::fs::read(db.path()).unwrap(), before, "the target is untouched");
    assert!(set_aside(&db.path()).is_empty());
    assert!(db.open().token(&kept).unwrap().is_some());
}

/// Review of issue 24, F3: restore opened the snapshot itself as a store (redb may write to a
/// file it opens, and a schema upgrade would have been written in place).
#[test]
fn a_restore_does_not_write_to_the_snapshot() {
    let db = Db::file();
    let store = db.open();
    store.rotate().unwrap();
    store.record_token(new_token(&store, "alice", None)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.redb");
    store.backup_to(&snap).unwrap();
    drop(store);
    let before = std::fs::read(&snap).unwrap();
    restore(&snap, &db.path(), &master()).unwrap();
    assert_eq!(std::fs::read(&snap).unwrap(), before, "the snapshot's bytes are unchanged");
}
