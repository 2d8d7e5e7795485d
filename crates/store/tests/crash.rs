//! Crash safety: a child process writes durably in a loop; we SIGKILL it at random points, then
//! reopen and check that every write it acknowledged is there, with its audit entry (written in
//! the same transaction), and the database opens cleanly with an audit chain that verifies.
//! `CRASH_ROUNDS` (default 20) sets the number of kills; `make crash` runs a longer soak.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tessera_core::TokenId;
use tessera_store::{AuditFilter, AuditKind, AuditVerdict, MasterKey, Store};

fn writer_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tessera-store-crash-writer"))
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom_fill(&mut b);
    u64::from_le_bytes(b) % n
}

fn getrandom_fill(b: &mut [u8]) {
    // The tid generator is the OS RNG; reuse it instead of adding a dependency.
    let t = TokenId::generate().unwrap();
    for (i, x) in b.iter_mut().enumerate() {
        *x = t.as_bytes()[i % 16];
    }
}

/// The targets of the writer's `token.mint` and `token.revoke` entries.
fn audited(store: &Store) -> (HashSet<TokenId>, HashSet<TokenId>) {
    let (mut minted, mut revoked) = (HashSet::new(), HashSet::new());
    let mut after = 0;
    loop {
        let filter = AuditFilter { after, actor: Some("crash-writer".into()), ..AuditFilter::default() };
        let page = store.audit(&filter).unwrap();
        let Some(last) = page.last() else { return (minted, revoked) };
        after = last.id;
        for e in page {
            match e.kind {
                AuditKind::TokenMint => minted.insert(e.target.tid.unwrap()),
                AuditKind::TokenRevoke => revoked.insert(e.target.tid.unwrap()),
                _ => false,
            };
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let rounds: usize = std::env::var("CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    let master = MasterKey::generate().unwrap();
    let hex = master.to_hex();
    let mut acked: Vec<TokenId> = Vec::new();
    let mut revoked: Vec<TokenId> = Vec::new();
    let bin = writer_binary();
    for round in 0..rounds {
        let mut child = Command::new(&bin)
            .arg(&db)
            .arg(hex.as_str())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a random number of acknowledgements (1..=40), or a random delay.
        let target = 1 + random_below(40) as usize;
        let deadline = Instant::now() + Duration::from_millis(50 + random_below(400));
        let mut seen = 0;
        while seen < target && Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            let (kind, tid) = line.split_once(' ').unwrap();
            let tid: TokenId = tid.parse().unwrap();
            match kind {
                "ack" => {
                    acked.push(tid);
                    seen += 1;
                }
                "rev" => revoked.push(tid),
                other => panic!("unexpected line {other}"),
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let store = Store::open(&db, master.clone())
            .unwrap_or_else(|e| panic!("round {round}: database does not open after SIGKILL: {e}"));
        for tid in &acked {
            assert!(store.token(tid).unwrap().is_some(), "round {round}: acknowledged write {tid} lost");
        }
        for tid in &revoked {
            assert!(store.is_token_revoked(tid), "round {round}: acknowledged revocation {tid} lost");
        }
        let (minted, revokes) = audited(&store);
        for tid in &acked {
            assert!(minted.contains(tid), "round {round}: acknowledged write {tid} has no token.mint entry");
        }
        for tid in &revoked {
            assert!(
                revokes.contains(tid),
                "round {round}: acknowledged revocation {tid} has no token.revoke entry"
            );
        }
        let verdict = store.verify_audit(None).unwrap();
        assert!(matches!(verdict, AuditVerdict::Intact { .. }), "round {round}: {verdict:?}");
    }
    assert!(acked.len() >= rounds, "every round acknowledged at least one write");
}
