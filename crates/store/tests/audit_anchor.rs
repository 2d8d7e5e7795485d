//! The audit anchor's own MAC and time (review of issue 22, finding 1), on both backends: an
//! anchor written behind the store's back (every entry deleted, the newest copied into the
//! anchor) is never reported intact; one with a MAC that does not check is Broken and named;
//! pruning writes the time and the MAC, checks the chain it deletes, and replaces an anchor from
//! before schema 10.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::time::Duration;

use ciborium::Value;
use common::*;
use redb::ReadableTable;
use tessera_store::{AuditAnchor, AuditFilter, AuditHead, AuditVerdict, Error, Store};

const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
const AUDIT: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");

/// `n` tokens recorded; every entry sealed.
fn with_entries(db: &Db, n: usize) -> Store {
    let store = db.open();
    store.rotate().unwrap();
    for _ in 0..n {
        store.record_token(new_token(&store, "bob", None)).unwrap();
    }
    seal(&store);
    store
}

fn seal(store: &Store) {
    for _ in 0..3000 {
        store.seal_audit().unwrap();
        let page = store.audit(&AuditFilter::default()).unwrap();
        if page.iter().all(|e| e.seq > 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("entries left unsealed");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Behind the store's back (closed): optionally delete every entry, then set the anchor to `seq`
/// and `link` with `sealed` (time and MAC; `None`: the encoding of schema 9, neither).
fn set_anchor(db: &Db, delete_entries: bool, seq: u64, link: [u8; 32], sealed: Option<(i64, [u8; 32])>) {
    match db {
        Db::Postgres(url) => {
            let (at, mac) = match sealed {
                Some((at, mac)) => (at.to_string(), format!("'\\x{}'", hex(&mac))),
                None => ("NULL".into(), "NULL".into()),
            };
            let wipe = if delete_entries { "DELETE FROM tessera_audit; " } else { "" };
            pg().sql(
                url,
                &format!(
                    "{wipe}DELETE FROM tessera_audit_anchor; INSERT INTO tessera_audit_anchor \
                     (one, seq, mac, pruned_at_ms, anchor_mac) VALUES (true, {seq}, '\\x{}', {at}, {mac})",
                    hex(&link)
                ),
            );
        }
        Db::File(_) => {
            let bytes = |b: &[u8]| Value::Array(b.iter().map(|x| Value::Integer((*x).into())).collect());
            let mut fields = vec![
                (Value::Text("seq".into()), Value::Integer(seq.into())),
                (Value::Text("mac".into()), bytes(&link)),
            ];
            if let Some((at, mac)) = sealed {
                fields.push((Value::Text("pruned_at_ms".into()), Value::Integer(at.into())));
                fields.push((Value::Text("anchor_mac".into()), bytes(&mac)));
            }
            let mut value = Vec::new();
            ciborium::into_writer(&Value::Map(fields), &mut value).unwrap();
            let file = redb::Database::create(db.path()).unwrap();
            let txn = file.begin_write().unwrap();
            {
                if delete_entries {
                    txn.delete_table(AUDIT).unwrap();
                    txn.open_table(AUDIT).unwrap();
                }
                txn.open_table(META).unwrap().insert("audit_anchor", value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
    }
}

fn anchor_of(store: &Store) -> AuditAnchor {
    match store.verify_audit(None).unwrap() {
        AuditVerdict::Intact { anchor: Some(a), .. } => a,
        other => panic!("{other:?}"),
    }
}

// The finding: with write access to the database (not the master key), delete every entry and
// copy the newest into the anchor: against a pin equal to that entry, the old code said Intact.
on_both!(an_anchor_copied_from_the_newest_entry_is_not_reported_intact, |db| {
    let store = with_entries(&db, 3);
    let newest = store.audit_head().unwrap().unwrap();
    drop(store);
    // As the old anchor encoding (no time, no MAC): unauthenticated, never Intact.
    set_anchor(&db, true, newest.seq, newest.mac, None);
    let store = db.open();
    for pin in [Some(newest), None] {
        match store.verify_audit(pin).unwrap() {
            AuditVerdict::UnauthenticatedAnchor { anchor, head, checked, .. } => {
                assert_eq!((anchor, head, checked), (newest, Some(newest), 0));
            }
            other => panic!("a copied anchor verified as {other:?}"),
        }
    }
    drop(store);
    // With a time and a MAC made up (no master key): Broken, at the anchor, saying so.
    set_anchor(&db, false, newest.seq, newest.mac, Some((1_700_000_000_000, [0x5a; 32])));
    let store = db.open();
    for pin in [Some(newest), None] {
        match store.verify_audit(pin).unwrap() {
            AuditVerdict::Broken { seq, reason } => {
                assert_eq!(seq, newest.seq);
                assert!(reason.contains("anchor") && reason.contains("MAC"), "{reason}");
            }
            other => panic!("a forged anchor verified as {other:?}"),
        }
    }
    // Pruning does not build on it either (nothing deleted, no new anchor).
    store.record_token(new_token(&store, "bob", None)).unwrap();
    seal(&store);
    assert!(matches!(store.prune_audit(i64::MAX), Err(Error::Corrupt(_))));
    assert_eq!(store.audit(&AuditFilter::default()).unwrap().len(), 1);
});

on_both!(pruning_writes_the_anchor_with_its_time_and_a_mac_that_covers_them, |db| {
    let store = with_entries(&db, 3);
    let newest = store.audit_head().unwrap().unwrap();
    let before = tessera_now_ms();
    assert_eq!(store.prune_audit(i64::MAX).unwrap(), 4);
    let after = tessera_now_ms();
    let anchor = anchor_of(&store);
    assert_eq!(anchor.head(), newest);
    let at = anchor.pruned_at_ms().unwrap();
    assert!((before..=after).contains(&at), "{before} <= {at} <= {after}");
    // The pin at the anchor still verifies, and the chain goes on from it.
    assert!(matches!(store.verify_audit(Some(newest)).unwrap(), AuditVerdict::Intact { .. }));
    let (_, mac) = anchor.sealed.unwrap();
    drop(store);
    // Each covered field changed alone: the MAC no longer checks.
    let edits: [(u64, [u8; 32], i64); 3] =
        [(newest.seq, newest.mac, at + 1), (newest.seq + 1, newest.mac, at), (newest.seq, [0x11; 32], at)];
    for (seq, link, at) in edits {
        set_anchor(&db, false, seq, link, Some((at, mac)));
        match db.open().verify_audit(None).unwrap() {
            AuditVerdict::Broken { seq: at_seq, reason } => {
                assert_eq!(at_seq, seq);
                assert!(reason.contains("anchor"), "{reason}");
            }
            other => panic!("an edited anchor verified as {other:?}"),
        }
    }
    // Put back as written: intact again.
    set_anchor(&db, false, newest.seq, newest.mac, Some((at, mac)));
    assert_eq!(anchor_of(&db.open()), anchor);
});

// An anchor written by a build before schema 10 has no MAC: reported as such until the next
// pruning, which checks the entries from it and writes an anchor with a MAC. On PostgreSQL the old
// build's own statement is used (a node not yet upgraded pruning during a rolling upgrade): it
// leaves an anchor without a MAC (the migration's trigger clears the previous time and MAC), not a
// false "broken".
on_both!(an_anchor_from_before_schema_10_is_replaced_by_the_next_pruning, |db| {
    let store = with_entries(&db, 2);
    let cut = store.audit(&AuditFilter::default()).unwrap().last().unwrap().at_ms + 1;
    std::thread::sleep(Duration::from_millis(5));
    store.record_token(new_token(&store, "bob", None)).unwrap();
    seal(&store);
    let fourth = store.audit_head().unwrap().unwrap();
    assert_eq!(store.prune_audit(cut).unwrap(), 3);
    assert!(anchor_of(&store).pruned_at_ms().is_some());
    store.record_token(new_token(&store, "bob", None)).unwrap();
    seal(&store);
    drop(store);
    // The old build prunes entry 4.
    match &db {
        Db::Postgres(url) => {
            pg().sql(
                url,
                &format!(
                    "DELETE FROM tessera_audit WHERE seq <= 4; \
                     INSERT INTO tessera_audit_anchor (one, seq, mac) VALUES (true, 4, '\\x{}') \
                     ON CONFLICT (one) DO UPDATE SET seq = excluded.seq, mac = excluded.mac",
                    hex(&fourth.mac)
                ),
            );
        }
        Db::File(_) => {
            let file = redb::Database::create(db.path()).unwrap();
            let txn = file.begin_write().unwrap();
            txn.open_table(AUDIT).unwrap().remove(4).unwrap();
            // And the file as that build left it: schema 9, migrated to 10 at the next open.
            let mut nine = Vec::new();
            ciborium::into_writer(&9u32, &mut nine).unwrap();
            txn.open_table(META).unwrap().insert("schema", nine.as_slice()).unwrap();
            txn.commit().unwrap();
            drop(file);
            set_anchor(&db, false, fourth.seq, fourth.mac, None);
        }
    }
    let store = db.open();
    match store.verify_audit(None).unwrap() {
        AuditVerdict::UnauthenticatedAnchor { anchor, checked, .. } => {
            assert_eq!((anchor, checked), (fourth, 1))
        }
        other => panic!("an anchor without a MAC verified as {other:?}"),
    }
    assert_eq!(store.prune_audit(i64::MAX).unwrap(), 1);
    let anchor = anchor_of(&store);
    assert_eq!(anchor.seq, 5);
    assert!(anchor.pruned_at_ms().is_some());
});

// Pruning used to delete whatever was old enough: an edited entry (and with it the evidence)
// went, and the anchor then made the rest verify.
on_both!(pruning_refuses_a_chain_that_breaks_in_what_it_would_delete, |db| {
    drop(with_entries(&db, 3));
    match &db {
        Db::Postgres(url) => {
            pg().sql(url, "UPDATE tessera_audit SET actor_subject = 'sysTem' WHERE seq = 2");
        }
        Db::File(_) => {
            let file = redb::Database::create(db.path()).unwrap();
            let txn = file.begin_write().unwrap();
            {
                let mut table = txn.open_table(AUDIT).unwrap();
                let mut value = table.get(2).unwrap().unwrap().value().to_vec();
                let at = value.windows(6).position(|w| w == b"system").unwrap();
                value[at + 3] = b'T';
                table.insert(2, value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
    }
    let store = db.open();
    let err = store.prune_audit(i64::MAX).unwrap_err();
    assert!(err.to_string().contains("entry 2"), "{err}");
    assert_eq!(store.audit(&AuditFilter::default()).unwrap().len(), 4, "nothing deleted");
    assert!(matches!(store.verify_audit(None).unwrap(), AuditVerdict::Broken { seq: 2, .. }));
});

fn tessera_now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis())
        .unwrap()
}

/// [`AuditHead`] is what the anchor is pinned as.
#[test]
fn an_anchor_reads_as_its_head() {
    let a = AuditAnchor { seq: 7, link: [3; 32], sealed: None };
    assert_eq!(a.head(), AuditHead { seq: 7, mac: [3; 32] });
    assert_eq!(a.pruned_at_ms(), None);
}
