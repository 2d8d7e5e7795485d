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
