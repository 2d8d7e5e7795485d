//! The batch's all-or-nothing operations and the audit chain across a replayed batch.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

use redb::ReadableTableMetadata;
use tessera_core::RootKey;

use super::*;
use crate::codec::NewToken;
use crate::follow::Follower;
use crate::memory::Memory;
use crate::writer::{Done, Job, Op, Writer};

fn job(op: Op) -> (Job, Receiver<Result<Done>>) {
    let (reply, rx) = mpsc::sync_channel(1);
    (Job { op, deadline: Instant::now() + std::time::Duration::from_secs(60), reply }, rx)
}

fn record(kid: KeyId, parent: Option<TokenId>) -> (TokenId, Op) {
    let tid = TokenId::generate().unwrap();
    let new = NewToken {
        tid,
        kid,
        subject: "alice".into(),
        description: String::new(),
        expires: None,
        caveats: vec![],
        parent,
    };
    (tid, Op::Record(new))
}

/// The backend's audit trail from its first entry: every link checks and the seqs have no
/// gap; how many entries.
fn chain_intact(backend: &RedbBackend, master: &MasterKey) -> usize {
    let key = AuditKey::from_master(master);
    let rows = backend.audit_sealed_after(0, 10_000).unwrap();
    let mut prev = [0u8; 32];
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.entry.seq, i as u64 + 1, "a gap before {}", row.entry.seq);
        let mac = row.mac.unwrap();
        assert!(key.checks(&prev, row, &mac), "the link of entry {}", row.entry.seq);
        prev = mac;
    }
    rows.len()
}

/// Security review finding 8: an operation that fails after some of its writes (here: revoking
/// a family whose descendant's record is corrupt, after the parent was marked and logged) must
/// commit none of them, and the other operations of the same batch must still commit.
#[test]
fn a_failing_operation_commits_nothing_and_the_rest_of_the_batch_commits() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::from_bytes([7; 32]);
    let backend = Arc::new(RedbBackend::open(&dir.path().join("t.redb"), &master).unwrap());
    let mem = Arc::new(Memory::new());
    let follower = Arc::new(Follower::new(backend.clone(), mem.clone(), master.clone()));
    let w = Writer { backend: backend.clone(), follower, master: master.clone(), visits: Default::default() };

    let kid = KeyId::generate().unwrap();
    let (add, rx) =
        job(Op::AddKey { kid, secret: RootKey::generate().unwrap(), activate: true, only_if_none: false });
    w.batch(vec![add]);
    assert!(rx.recv().unwrap().is_ok());
    let (p, rec_p) = record(kid, None);
    let (c, rec_c) = record(kid, Some(p));
    let (j1, r1) = job(rec_p);
    let (j2, r2) = job(rec_c);
    w.batch(vec![j1, j2]);
    assert!(r1.recv().unwrap().is_ok() && r2.recv().unwrap().is_ok());
    let seq_before = mem.last_seq();

    // Corrupt the child's record behind the writer's back.
    {
        let txn = backend.db.begin_write().unwrap();
        txn.open_table(TOKENS).unwrap().insert(c.as_bytes(), &b"\xff\xff not cbor"[..]).unwrap();
        txn.commit().unwrap();
    }
    let (x, rec_x) = record(kid, None);
    let (y, rec_y) = record(kid, None);
    let (jx, rx_x) = job(rec_x);
    let (jr, rx_r) = job(Op::RevokeToken(p));
    let (jy, rx_y) = job(rec_y);
    w.batch(vec![jx, jr, jy]);
    assert!(matches!(rx_r.recv().unwrap(), Err(Error::Corrupt(_))));
    assert!(rx_x.recv().unwrap().is_ok());
    assert!(rx_y.recv().unwrap().is_ok());

    // Nothing of the failed revocation is stored or in memory; the others are stored.
    assert_eq!(backend.token(&p).unwrap().unwrap().revoked_at, None, "parent marked revoked by a failed op");
    let txn = backend.db.begin_read().unwrap();
    assert_eq!(txn.open_table(CHANGES).unwrap().len().unwrap(), seq_before, "log entry of a failed op");
    assert!(!mem.is_revoked(&p));
    assert_eq!(mem.last_seq(), seq_before);
    assert!(backend.token(&x).unwrap().is_some() && backend.token(&y).unwrap().is_some());

    // The audit entries of the batch that was replayed chain on from the last commit's:
    // the key's, p's and c's, then x's and y's (the failed revocation's is gone with it).
    assert_eq!(chain_intact(&backend, &master), 5);
    let (z, rec_z) = record(kid, None);
    let (jz, rx_z) = job(rec_z);
    w.batch(vec![jz]);
    assert!(rx_z.recv().unwrap().is_ok() && backend.token(&z).unwrap().is_some());
    assert_eq!(chain_intact(&backend, &master), 6);
}

// ---- reviewer (r-redbaudit) reproductions ----

/// A sealed row with `seq`, `id`, chained from `prev`.
fn audit_row(key: &AuditKey, prev: &[u8; 32], seq: u64, id: u64, at_ms: i64) -> AuditRow {
    use crate::audit::{new_row, Actor, AuditKind, Outcome, Target};
    let mut row = new_row(AuditKind::TokenMint, Outcome::Success, &Actor::system(), Target::default(), at_ms);
    row.entry.seq = seq;
    row.entry.id = id;
    row.mac = Some(key.link(prev, &row));
    row
}

/// One entry written through the batch path (as an operation's entry would be); its id.
fn write_entry(backend: &RedbBackend, at_ms: i64) -> u64 {
    use crate::audit::{new_row, Actor, AuditKind, Outcome, Target};
    let row = new_row(AuditKind::TokenMint, Outcome::Refused, &Actor::system(), Target::default(), at_ms);
    let r = backend
        .batch(1, Instant::now() + Duration::from_secs(60), &mut |tx, _| tx.insert_audit(&row, Only::Always))
        .unwrap();
    r.into_iter().for_each(|r| r.unwrap());
    backend.audit_sealed_after(0, 10_000).unwrap().last().unwrap().entry.id
}

/// R1 (the helper's report): a trail copied from PostgreSQL (ids not equal to seqs), then entries
/// written on redb (ids above the copied floor), then pruned completely: the next entry's id is
/// computed from the floor alone and repeats an id already handed out. A reader following by
/// cursor (`?after=<the last id it saw>`) never sees the new entry.
#[test]
fn a_full_prune_of_a_copied_trail_never_hands_an_id_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::from_bytes([7; 32]);
    let key = AuditKey::from_master(&master);
    let backend = RedbBackend::open(&dir.path().join("t.redb"), &master).unwrap();
    // As PostgreSQL left it: seqs 1..3, ids 10, 5, 20 (sealed out of id order).
    let r1 = audit_row(&key, &[0; 32], 1, 10, 1_000);
    let r2 = audit_row(&key, &r1.mac.unwrap(), 2, 5, 1_001);
    let r3 = audit_row(&key, &r2.mac.unwrap(), 3, 20, 1_002);
    let rows = vec![r1, r2, r3];
    let res = backend
        .batch(1, Instant::now() + Duration::from_secs(60), &mut |tx, _| tx.copy_audit(None, &rows))
        .unwrap();
    res.into_iter().for_each(|r| r.unwrap());
    // Entries written on redb after the copy: ids 21, 22.
    let a = write_entry(&backend, 2_000);
    let b = write_entry(&backend, 2_001);
    assert_eq!((a, b), (21, 22));
    // A follower has read up to id 22.
    let cursor = b;
    // Retention prunes every entry (all older than the cut-off).
    assert_eq!(backend.prune_audit(&key, 10_000, 10_000).unwrap(), 5);
    let c = write_entry(&backend, 20_000);
    let followed = backend.audit(&AuditFilter { after: cursor, ..Default::default() }).unwrap();
    assert!(
        c > cursor,
        "id {c} handed out again (ids 21 and 22 were handed out before the prune); a follower at \
         after={cursor} sees {} new entries",
        followed.len()
    );
}

/// R1 without a copy: on a trail that was always redb (no floor), a full prune keeps ids going.
#[test]
fn a_full_prune_without_a_copy_keeps_ids_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::from_bytes([7; 32]);
    let key = AuditKey::from_master(&master);
    let backend = RedbBackend::open(&dir.path().join("t.redb"), &master).unwrap();
    let a = write_entry(&backend, 1_000);
    let b = write_entry(&backend, 1_001);
    assert_eq!((a, b), (1, 2));
    assert_eq!(backend.prune_audit(&key, 10_000, 10_000).unwrap(), 2);
    assert_eq!(write_entry(&backend, 20_000), 3);
    // The cached tail names seq 2, the table is empty: read again from the anchor; the chain
    // from the anchor checks.
    let anchor = backend.audit_anchor().unwrap().unwrap();
    let rows = backend.audit_sealed_after(0, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(key.checks(&anchor.head().mac, &rows[0], &rows[0].mac.unwrap()));
}

/// Cached tail across a partial prune, an aborted operation, a replay and a copied floor: every
/// entry chains from its predecessor, ids strictly increase, seqs have no gap.
#[test]
fn the_cached_tail_holds_across_prune_abort_and_replay() {
    use crate::audit::{new_row, Actor, AuditKind, Outcome, Target};
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::from_bytes([7; 32]);
    let key = AuditKey::from_master(&master);
    let backend = RedbBackend::open(&dir.path().join("t.redb"), &master).unwrap();
    let r1 = audit_row(&key, &[0; 32], 1, 50, 1_000);
    let r2 = audit_row(&key, &r1.mac.unwrap(), 2, 40, 1_001);
    let rows = vec![r1, r2];
    backend
        .batch(1, Instant::now() + Duration::from_secs(60), &mut |tx, _| tx.copy_audit(None, &rows))
        .unwrap();
    let mut ids = vec![write_entry(&backend, 2_000)];
    // A batch of 4 operations: op 1 writes then fails (aborted, replayed without it), op 2 writes twice.
    let row = |t| new_row(AuditKind::TokenMint, Outcome::Refused, &Actor::system(), Target::default(), t);
    let res = backend
        .batch(4, Instant::now() + Duration::from_secs(60), &mut |tx, i| {
            tx.insert_audit(&row(3_000 + i as i64), Only::Always)?;
            if i == 1 {
                return Err(Error::Corrupt("fails after its entry".into()));
            }
            if i == 2 {
                tx.insert_audit(&row(3_100), Only::Always)?;
            }
            Ok(())
        })
        .unwrap();
    assert!(res[1].is_err() && res[0].is_ok() && res[2].is_ok() && res[3].is_ok());
    // Prune the copied part and the first redb entry, keep the rest.
    assert_eq!(backend.prune_audit(&key, 2_500, 9_000).unwrap(), 3);
    ids.push(write_entry(&backend, 4_000));
    ids.push(write_entry(&backend, 4_001));
    let anchor = backend.audit_anchor().unwrap().unwrap();
    let rows = backend.audit_sealed_after(0, 100).unwrap();
    let (mut seq, mut prev) = (anchor.head().seq, anchor.head().mac);
    let mut last_id = 51; // every id handed out so far is ≤ 51 (copied 50, 40; first write 51)
    for r in &rows {
        assert_eq!(r.entry.seq, seq + 1);
        assert!(key.checks(&prev, r, &r.mac.unwrap()), "link of {}", r.entry.seq);
        assert!(r.entry.id > last_id, "id {} after {}", r.entry.id, last_id);
        seq = r.entry.seq;
        prev = r.mac.unwrap();
        last_id = r.entry.id;
    }
    assert_eq!(rows.len(), 6);
    assert_eq!(ids[0], 51);
}

/// A second handle on the same file (it would hold its own tail) is refused.
#[test]
fn a_second_handle_on_one_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::from_bytes([7; 32]);
    let path = dir.path().join("t.redb");
    let _a = RedbBackend::open(&path, &master).unwrap();
    assert!(RedbBackend::open(&path, &master).is_err());
}
