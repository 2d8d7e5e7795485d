//! `mint_n N [CLIENTS]`: record N tokens in a new embedded (redb) store as section 1 of
//! `make bench-cluster` does for redb (`Store::record_token`, durable), from one thread or from
//! CLIENTS threads at once (N split between them; their records share commits, as the bench's
//! "8 clients" do): for instruction counts that do not move with machine noise
//! (`scripts/mint-instructions.sh`: `valgrind --tool=callgrind` at N = 0 and N = 2000, the
//! difference divided by 2000 is one record with everything it writes). With CLIENTS, how many
//! records share a commit depends on how valgrind schedules the threads: that count is rougher.
//!
//! Only the store's public API of before the audit trail is used, so the same file builds at an
//! older commit for a before/after comparison. The fsyncs a commit makes are system calls, which
//! callgrind does not count: the count is the CPU work of one record.

#![allow(missing_docs)] // example binary
#![allow(clippy::unwrap_used)] // bench fixture: any failure should be loud

use tessera_core::TokenId;
use tessera_store::{MasterKey, NewToken, Store};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let clients: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("t.redb"), MasterKey::from_bytes([0x42; 32])).unwrap();
    store.rotate().unwrap();
    let kid = store.active_key().unwrap().0;
    std::thread::scope(|s| {
        for c in 0..clients {
            let store = &store;
            s.spawn(move || {
                let subject = format!("node0-client{c}");
                for _ in 0..n / clients + usize::from(c < n % clients) {
                    store
                        .record_token(NewToken {
                            tid: TokenId::generate().unwrap(),
                            kid,
                            subject: subject.clone(),
                            description: "bench".into(),
                            expires: Some(2_000_000_000),
                            caveats: vec!["allow read".into()],
                            parent: None,
                        })
                        .unwrap();
                }
            });
        }
    });
}
