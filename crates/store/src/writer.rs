//! The writer: one thread that drains every queued operation into one durable transaction
//! (group commit), each operation all-or-nothing, and changes memory only after the commit.

use std::collections::HashSet;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable};
use tessera_core::{KeyId, RootKey, TokenId};

use crate::codec::{
    self, KeyInfo, KeyState, NewToken, Revocation, RevocationTarget, StoredKey, StoredRevocation,
    StoredToken, TokenRecord,
};
use crate::error::{storage, Error, Result};
use crate::master::MasterKey;
use crate::store::{now, KeyEntry, Memory, BY_SUBJECT, CHILDREN, KEYS, REVOCATIONS, TOKENS};

/// Most operations one commit carries.
const MAX_BATCH: usize = 512;

/// A write the store asks of the writer.
pub(crate) enum Op {
    AddKey { kid: KeyId, secret: RootKey, activate: bool },
    RevokeKey(KeyId),
    Record(NewToken),
    RevokeToken(TokenId),
}

/// The writer's answer to one [`Op`].
pub(crate) enum Done {
    Key(KeyInfo),
    Token(TokenRecord),
    Revocation(Option<Revocation>),
    Revocations(Vec<Revocation>),
}

/// An operation and where its answer goes.
pub(crate) type Job = (Op, SyncSender<Result<Done>>);

/// Effects on memory, applied once the commit succeeded.
enum Effect {
    Key { kid: KeyId, secret: Option<RootKey>, state: KeyState },
    Active(Option<KeyId>),
    Revoked(TokenId),
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) db: Arc<Database>,
    pub(crate) mem: Arc<Memory>,
    pub(crate) master: MasterKey,
    pub(crate) next_seq: u64,
}

impl Writer {
    pub(crate) fn run(mut self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.batch(jobs);
        }
    }

    /// One durable transaction for every queued operation. Each operation is all-or-nothing:
    /// when one fails (a refusal, or an error half-way through its writes), the transaction is
    /// aborted and replayed without it, so nothing it wrote is committed and the others still are.
    fn batch(&mut self, mut jobs: Vec<Job>) {
        loop {
            let seq_before = self.next_seq;
            let mut effects = Vec::new();
            let outcome = (|| -> Result<std::result::Result<Vec<Done>, (usize, Error)>> {
                let mut txn = self.db.begin_write().map_err(storage)?;
                txn.set_durability(Durability::Immediate).map_err(storage)?;
                let mut results = Vec::with_capacity(jobs.len());
                for (i, (op, _)) in jobs.iter().enumerate() {
                    match self.apply(&txn, op, &mut effects) {
                        Ok(done) => results.push(done),
                        Err(e) => {
                            txn.abort().map_err(storage)?;
                            return Ok(Err((i, e)));
                        }
                    }
                }
                txn.commit().map_err(storage)?;
                Ok(Ok(results))
            })();
            match outcome {
                Ok(Ok(results)) => {
                    self.effect(effects);
                    for ((_, reply), result) in jobs.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                    return;
                }
                Ok(Err((failed, e))) => {
                    // Nothing was committed: answer the failed operation, replay the rest.
                    self.next_seq = seq_before;
                    let (_, reply) = jobs.remove(failed);
                    let _ = reply.send(Err(e));
                    if jobs.is_empty() {
                        return;
                    }
                }
                Err(e) => {
                    self.next_seq = seq_before;
                    let msg = e.to_string();
                    for (_, reply) in jobs {
                        let _ =
                            reply.send(Err(Error::Corrupt(format!("commit failed, nothing written: {msg}"))));
                    }
                    return;
                }
            }
        }
    }

    fn effect(&self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Key { kid, secret, state } => {
                    if let Ok(mut keys) = self.mem.keys.write() {
                        match secret {
                            Some(secret) => {
                                keys.insert(kid, KeyEntry { secret, state });
                            }
                            None => {
                                if let Some(entry) = keys.get_mut(&kid) {
                                    entry.state = state;
                                }
                            }
                        }
                    }
                }
                Effect::Active(kid) => {
                    if let Ok(mut a) = self.mem.active.write() {
                        *a = kid;
                    }
                }
                Effect::Revoked(tid) => {
                    if let Ok(mut r) = self.mem.revoked.write() {
                        r.insert(tid);
                    }
                }
            }
        }
    }

    fn log(&mut self, txn: &redb::WriteTransaction, at: i64, target: RevocationTarget) -> Result<Revocation> {
        let seq = self.next_seq;
        let entry = StoredRevocation { at, target: target.into() };
        txn.open_table(REVOCATIONS)
            .map_err(storage)?
            .insert(seq, codec::encode(&entry).as_slice())
            .map_err(storage)?;
        self.next_seq += 1;
        Ok(Revocation { seq, at, target })
    }

    /// Mark one token record revoked and log it; `None` when it already was.
    fn revoke_one(
        &mut self,
        txn: &redb::WriteTransaction,
        tid: &TokenId,
        at: i64,
    ) -> Result<Option<Revocation>> {
        let mut tokens = txn.open_table(TOKENS).map_err(storage)?;
        let mut stored: StoredToken = match tokens.get(tid.as_bytes()).map_err(storage)? {
            None => return Err(Error::UnknownToken(*tid)),
            Some(v) => codec::decode(v.value(), "token")?,
        };
        if stored.revoked_at.is_some() {
            return Ok(None);
        }
        stored.revoked_at = Some(at);
        tokens.insert(tid.as_bytes(), codec::encode(&stored).as_slice()).map_err(storage)?;
        drop(tokens);
        self.log(txn, at, RevocationTarget::Token(*tid)).map(Some)
    }

    /// Apply one operation inside the batch's transaction. An error may come after some writes:
    /// [`Writer::batch`] then aborts and replays without it.
    fn apply(&mut self, txn: &redb::WriteTransaction, op: &Op, effects: &mut Vec<Effect>) -> Result<Done> {
        let at = now();
        match op {
            Op::AddKey { kid, secret, activate } => {
                let mut keys = txn.open_table(KEYS).map_err(storage)?;
                if *activate {
                    // Retire the current active key (there is at most one).
                    let mut current = Vec::new();
                    for row in keys.range::<[u8; 8]>(..).map_err(storage)? {
                        let (k, v) = row.map_err(storage)?;
                        let stored: StoredKey = codec::decode(v.value(), "key")?;
                        if stored.state == KeyState::Active {
                            current.push((k.value(), stored));
                        }
                    }
                    for (k, mut stored) in current {
                        stored.state = KeyState::Retired;
                        stored.retired_at = Some(at);
                        keys.insert(k, codec::encode(&stored).as_slice()).map_err(storage)?;
                        effects.push(Effect::Key {
                            kid: KeyId::from_bytes(k),
                            secret: None,
                            state: KeyState::Retired,
                        });
                    }
                }
                let state = if *activate { KeyState::Active } else { KeyState::Retired };
                let stored = StoredKey {
                    sealed: self.master.seal(kid.as_bytes(), secret.expose_secret())?,
                    state,
                    created: at,
                    retired_at: (!activate).then_some(at),
                    revoked_at: None,
                };
                keys.insert(kid.as_bytes(), codec::encode(&stored).as_slice()).map_err(storage)?;
                effects.push(Effect::Key { kid: *kid, secret: Some(secret.clone()), state });
                if *activate {
                    effects.push(Effect::Active(Some(*kid)));
                }
                Ok(Done::Key(stored.info(*kid)))
            }
            Op::RevokeKey(kid) => {
                let mut keys = txn.open_table(KEYS).map_err(storage)?;
                let mut stored: StoredKey = match keys.get(kid.as_bytes()).map_err(storage)? {
                    None => return Err(Error::UnknownKey(*kid)),
                    Some(v) => codec::decode(v.value(), "key")?,
                };
                if stored.state == KeyState::Revoked {
                    return Ok(Done::Revocation(None));
                }
                let was_active = stored.state == KeyState::Active;
                stored.state = KeyState::Revoked;
                stored.revoked_at = Some(at);
                keys.insert(kid.as_bytes(), codec::encode(&stored).as_slice()).map_err(storage)?;
                drop(keys);
                let entry = self.log(txn, at, RevocationTarget::Key(*kid))?;
                effects.push(Effect::Key { kid: *kid, secret: None, state: KeyState::Revoked });
                if was_active {
                    effects.push(Effect::Active(None));
                }
                Ok(Done::Revocation(Some(entry)))
            }
            Op::Record(new) => {
                let keys = txn.open_table(KEYS).map_err(storage)?;
                let key: StoredKey = match keys.get(new.kid.as_bytes()).map_err(storage)? {
                    None => return Err(Error::UnknownKey(new.kid)),
                    Some(v) => codec::decode(v.value(), "key")?,
                };
                if key.state == KeyState::Revoked {
                    return Err(Error::KeyRevoked(new.kid));
                }
                let mut tokens = txn.open_table(TOKENS).map_err(storage)?;
                if tokens.get(new.tid.as_bytes()).map_err(storage)?.is_some() {
                    return Err(Error::DuplicateToken(new.tid));
                }
                if let Some(parent) = &new.parent {
                    // Checked in the same transaction as a revocation would be: a child is never
                    // recorded under a parent whose revocation has committed.
                    let p: StoredToken = match tokens.get(parent.as_bytes()).map_err(storage)? {
                        None => return Err(Error::UnknownToken(*parent)),
                        Some(v) => codec::decode(v.value(), "token")?,
                    };
                    if p.revoked_at.is_some() {
                        return Err(Error::ParentRevoked(*parent));
                    }
                }
                let stored = StoredToken {
                    kid: *new.kid.as_bytes(),
                    subject: new.subject.clone(),
                    description: new.description.clone(),
                    created: at,
                    expires: new.expires,
                    caveats: new.caveats.clone(),
                    revoked_at: None,
                    parent: new.parent.map(|p| *p.as_bytes()),
                };
                tokens.insert(new.tid.as_bytes(), codec::encode(&stored).as_slice()).map_err(storage)?;
                txn.open_table(BY_SUBJECT)
                    .map_err(storage)?
                    .insert((new.subject.as_str(), *new.tid.as_bytes()), ())
                    .map_err(storage)?;
                if let Some(parent) = &new.parent {
                    txn.open_table(CHILDREN)
                        .map_err(storage)?
                        .insert((*parent.as_bytes(), *new.tid.as_bytes()), ())
                        .map_err(storage)?;
                }
                Ok(Done::Token(stored.into_record(new.tid)))
            }
            Op::RevokeToken(tid) => {
                if txn.open_table(TOKENS).map_err(storage)?.get(tid.as_bytes()).map_err(storage)?.is_none() {
                    return Err(Error::UnknownToken(*tid));
                }
                // The family and, breadth first, every family minted from it.
                let mut entries = Vec::new();
                let mut queue = std::collections::VecDeque::from([*tid]);
                let mut seen = HashSet::from([*tid]);
                while let Some(t) = queue.pop_front() {
                    if let Some(entry) = self.revoke_one(txn, &t, at)? {
                        effects.push(Effect::Revoked(t));
                        entries.push(entry);
                    }
                    let children = txn.open_table(CHILDREN).map_err(storage)?;
                    for row in children
                        .range((*t.as_bytes(), [0u8; 16])..=(*t.as_bytes(), [0xffu8; 16]))
                        .map_err(storage)?
                    {
                        let child = TokenId::from_bytes(row.map_err(storage)?.0.value().1);
                        if seen.insert(child) {
                            queue.push_back(child);
                        }
                    }
                }
                Ok(Done::Revocations(entries))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

    use std::sync::mpsc::{self, Receiver};

    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;
    use crate::store::{check_or_init, load};

    fn job(op: Op) -> (Job, Receiver<Result<Done>>) {
        let (tx, rx) = mpsc::sync_channel(1);
        ((op, tx), rx)
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

    fn stored(db: &Database, tid: &TokenId) -> Option<StoredToken> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(TOKENS).unwrap();
        let v = table.get(tid.as_bytes()).unwrap()?;
        codec::decode(v.value(), "token").ok()
    }

    /// Security review finding 8: an operation that fails after some of its writes (here: revoking
    /// a family whose descendant's record is corrupt, after the parent was marked and logged) must
    /// commit none of them, and the other operations of the same batch must still commit.
    #[test]
    fn a_failing_operation_commits_nothing_and_the_rest_of_the_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([7; 32]);
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        check_or_init(&db, &master).unwrap();
        let (mem, next_seq) = load(&db, &master).unwrap();
        let mut w = Writer { db: Arc::new(db), mem: Arc::new(mem), master, next_seq };

        let kid = KeyId::generate().unwrap();
        let (add, rx) = job(Op::AddKey { kid, secret: RootKey::generate().unwrap(), activate: true });
        w.batch(vec![add]);
        assert!(rx.recv().unwrap().is_ok());
        let (p, rec_p) = record(kid, None);
        let (c, rec_c) = record(kid, Some(p));
        let (j1, r1) = job(rec_p);
        let (j2, r2) = job(rec_c);
        w.batch(vec![j1, j2]);
        assert!(r1.recv().unwrap().is_ok() && r2.recv().unwrap().is_ok());

        // Corrupt the child's record behind the writer's back.
        {
            let txn = w.db.begin_write().unwrap();
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
        assert_eq!(stored(&w.db, &p).unwrap().revoked_at, None, "parent marked revoked by a failed op");
        let txn = w.db.begin_read().unwrap();
        assert_eq!(txn.open_table(REVOCATIONS).unwrap().len().unwrap(), 0, "log entry of a failed op");
        assert!(w.mem.revoked.read().unwrap().is_empty());
        assert_eq!(w.next_seq, 1, "sequence numbers of a failed op are reused");
        assert!(stored(&w.db, &x).is_some() && stored(&w.db, &y).is_some());
    }
}
