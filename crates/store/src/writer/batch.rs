//! A batch: the writer's jobs in one durable transaction of the backend, the plain token
//! records of it together as one operation, and the answers.

use std::time::Instant;

use super::{missed, stored_token, Done, Job, Op, Writer};
use crate::audit::{self, Actor};
use crate::backend::Tx;
use crate::codec::{NewToken, StoredToken};
use crate::error::{Error, Result};
use crate::store::{now_ms, WRITE_DEADLINE};
use tessera_core::TokenId;

impl Writer {
    /// One durable transaction for every queued operation whose deadline has not passed; the
    /// others are answered `Unavailable` without being run. The transaction must end by the
    /// earliest deadline among its operations (on a database that can fail to answer, its calls
    /// time out then), so every job is answered by its own deadline.
    pub(crate) fn batch(&self, jobs: Vec<Job>) {
        self.run_batch(jobs, true);
    }

    /// [`Writer::batch`]; with `group`, the plain token records go together (see below).
    fn run_batch(&self, jobs: Vec<Job>, group: bool) {
        let now = Instant::now();
        let (jobs, late): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.deadline > now);
        for job in late {
            missed(&job);
            let _ = job.reply.send(Err(Error::Unavailable(format!(
                "no answer within {} s: the write waited for the database and was not run, nothing written",
                WRITE_DEADLINE.as_secs()
            ))));
        }
        let Some(deadline) = jobs.iter().map(|j| j.deadline).min() else { return };
        // The plain token records go first, together, as one operation of the transaction: no
        // caller has heard another's answer yet, so any order of the batch is one they could
        // have happened in, and a shared database then checks and writes them all in one round
        // trip. A refused record writes nothing, so it needs no savepoint of its own.
        let (records, others): (Vec<usize>, Vec<usize>) =
            (0..jobs.len()).partition(|&i| plain_record(&jobs[i].op).is_some());
        let units: Vec<Unit> = if group && records.len() > 1 {
            std::iter::once(Unit::Records(records)).chain(others.into_iter().map(Unit::One)).collect()
        } else {
            (0..jobs.len()).map(Unit::One).collect()
        };
        let mut done: Vec<Option<Result<Done>>> = jobs.iter().map(|_| None).collect();
        // Memory must follow the log before an answer when the batch appended to it, and also
        // when an operation's answer speaks of state memory holds (revoking what another node
        // revoked already appends nothing, but its caller must then find it revoked here).
        let mut appended = jobs.iter().any(|j| !memoryless(&j.op));
        let outcome = self.backend.batch(units.len(), deadline, &mut |tx, u| {
            let out = match &units[u] {
                Unit::One(i) => self.apply(tx, &jobs[*i].op).map(|d| done[*i] = Some(Ok(d))),
                Unit::Records(all) => {
                    self.apply_records(tx, all.iter().map(|&i| &jobs[i].op)).map(|outcomes| {
                        for (&i, o) in all.iter().zip(outcomes) {
                            done[i] = Some(o);
                        }
                    })
                }
            };
            appended |= tx.appended();
            out
        });
        match outcome {
            Ok(results) => {
                // Memory follows the log before anyone hears of the commit (a batch that
                // appended nothing has nothing to follow: no read back). If the database cannot
                // be read back right now, the follower catches up later.
                if appended {
                    let _ = self.follower.catch_up();
                }
                let mut answers: Vec<Option<Result<Done>>> = jobs.iter().map(|_| None).collect();
                // Records that failed together because of one database error (a deadlock with
                // another node, say) are run again one by one: only the one at fault fails.
                let mut alone: Vec<usize> = Vec::new();
                let mut take = |i: usize| {
                    done[i].take().unwrap_or_else(|| Err(Error::Corrupt("operation left no result".into())))
                };
                for (unit, result) in units.iter().zip(results) {
                    match unit {
                        Unit::One(i) => answers[*i] = Some(result.and_then(|()| take(*i))),
                        Unit::Records(all) => match &result {
                            Ok(()) => all.iter().for_each(|&i| answers[i] = Some(take(i))),
                            Err(Error::Unavailable(_) | Error::Unconfirmed(_)) => {
                                let e = result.as_ref().err();
                                all.iter().for_each(|&i| answers[i] = e.map(|e| Err(again(e))));
                            }
                            Err(_) => alone.extend(all.iter().copied()),
                        },
                    }
                }
                let mut retry = Vec::new();
                for (i, (job, answer)) in jobs.into_iter().zip(answers).enumerate() {
                    if alone.contains(&i) {
                        retry.push(job);
                        continue;
                    }
                    let answer =
                        answer.unwrap_or_else(|| Err(Error::Corrupt("operation left no result".into())));
                    if answer.is_err() {
                        missed(&job);
                    }
                    let _ = job.reply.send(answer);
                }
                if !retry.is_empty() {
                    // Nothing of them was written: their unit was rolled back.
                    self.run_batch(retry, false);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let unavailable = matches!(e, Error::Unavailable(_));
                for job in jobs {
                    missed(&job);
                    let err = if let Error::Unconfirmed(m) = &e {
                        Error::Unconfirmed(m.clone())
                    } else if unavailable {
                        Error::Unavailable(format!("nothing written: {msg}"))
                    } else {
                        Error::Corrupt(format!("commit failed, nothing written: {msg}"))
                    };
                    let _ = job.reply.send(Err(err));
                }
            }
        }
    }

    /// The plain token records of a batch, as one operation: each checked and written (or
    /// refused, writing nothing) with its audit entry, in one call of the backend.
    fn apply_records<'a>(
        &self,
        tx: &mut dyn Tx,
        ops: impl Iterator<Item = &'a Op>,
    ) -> Result<Vec<Result<Done>>> {
        let at_ms = now_ms();
        let at = at_ms.div_euclid(1000);
        let ops: Vec<(&Op, &NewToken, Option<&Actor>)> = ops.filter_map(plain_record).collect();
        let rows: Vec<(TokenId, StoredToken)> =
            ops.iter().map(|(_, new, _)| (new.tid, stored_token(new, at, None, None))).collect();
        let outcomes = tx.record_tokens(&rows)?;
        let system = Actor::system();
        let mut out = Vec::with_capacity(ops.len());
        for (((op, _, actor), (tid, stored)), outcome) in ops.iter().zip(rows).zip(outcomes) {
            out.push(match outcome {
                Ok(()) => {
                    let done = Done::Token(stored.into_record(tid));
                    for (row, only) in audit::rows_for(op, &done, actor.unwrap_or(&system), at_ms) {
                        tx.insert_audit(&row, only)?;
                    }
                    Ok(done)
                }
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }
}

/// What the backend runs as one operation of a batch's transaction.
enum Unit {
    /// One job.
    One(usize),
    /// These jobs, every one a plain token record (see [`Writer::apply_records`]).
    Records(Vec<usize>),
}

/// A plain token record (on behalf of an actor or not): the operation, the record, the actor.
fn plain_record(op: &Op) -> Option<(&Op, &NewToken, Option<&Actor>)> {
    match op {
        Op::Record(new) => Some((op, new, None)),
        Op::As { actor, op } => match &**op {
            Op::Record(new) => Some((&**op, new, Some(&**actor))),
            _ => None,
        },
        _ => None,
    }
}

/// The same failure again, for each operation of a unit that failed as a whole.
fn again(e: &Error) -> Error {
    match e {
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::Unconfirmed(m) => Error::Unconfirmed(m.clone()),
        other => Error::Database(format!("nothing written: {other}")),
    }
}

/// Whether an operation's answer says nothing of what memory holds (revoked families, keys,
/// signing keys, applications), so a batch of only such operations that appended nothing need
/// not be followed before its answers.
fn memoryless(op: &Op) -> bool {
    match op {
        Op::As { op, .. } => memoryless(op),
        Op::Record(_)
        | Op::CreateLink { .. }
        | Op::CreateSession { .. }
        | Op::RefreshSession { .. }
        | Op::Consume(_)
        | Op::Touch(_)
        | Op::ClaimNotice(_)
        | Op::PutNotice(_)
        | Op::LeaseNotice { .. }
        | Op::Note { .. } => true,
        _ => false,
    }
}
