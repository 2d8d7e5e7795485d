#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::collections::HashSet;

use super::*;

/// A small deterministic generator (xorshift), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn tid(&mut self) -> TokenId {
        let v = (u128::from(self.next()) << 64) | u128::from(self.next());
        TokenId::from_bytes(v.to_le_bytes())
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The inverse of an odd number mod 2^128 (Newton's iteration doubles the correct bits).
fn inverse(m: u128) -> u128 {
    let mut x = m; // right to 3 bits: m * m = 1 mod 8 for odd m
    for _ in 0..6 {
        x = x.wrapping_mul(2u128.wrapping_sub(m.wrapping_mul(x)));
    }
    assert_eq!(m.wrapping_mul(x), 1);
    x
}

/// The id whose key in `set` is `key`.
fn id_of(set: &RevokedSet, key: u128) -> TokenId {
    TokenId::from_bytes(key.wrapping_mul(inverse(set.multiplier)).to_le_bytes())
}

fn loaded(ids: &[TokenId]) -> RevokedSet {
    let mut set = RevokedSet::loading(ids.len());
    for t in ids {
        assert_eq!(set.insert(*t), None);
    }
    set.finish_loading();
    set
}

#[test]
fn empty_set_holds_nothing() {
    let mut rng = Rng(1);
    for set in [RevokedSet::new(), loaded(&[]), RevokedSet::loading(1_000)] {
        assert!(set.is_empty());
        assert_eq!(set.len(), 0);
        for _ in 0..1_000 {
            assert!(!set.contains(&rng.tid()));
        }
        assert!(!set.contains(&TokenId::from_bytes([0; 16])));
        assert!(!set.contains(&TokenId::from_bytes([0xff; 16])));
    }
}

#[test]
fn keys_at_segment_and_bucket_boundaries_are_exact() {
    let mut rng = Rng(2);
    // Enough random ids that segments have bucket indexes, then keys on every edge.
    let mut ids: Vec<TokenId> = (0..50_000).map(|_| rng.tid()).collect();
    let probe = RevokedSet::new();
    let mut edges = vec![0u128, 1, u128::MAX, u128::MAX - 1];
    for s in 0..SEGMENTS as u128 {
        let start = s << (u128::BITS - SEGMENT_BITS);
        edges.extend([
            start,
            start + 1,
            start + (1 << 100),
            start | ((1 << (u128::BITS - SEGMENT_BITS)) - 1),
        ]);
    }
    edges.sort_unstable();
    edges.dedup();
    let set = {
        // Built under the multiplier the edge ids were made for.
        ids.extend(edges.iter().map(|k| id_of(&probe, *k)));
        let mut s = RevokedSet::loading(ids.len());
        s.multiplier = probe.multiplier;
        for t in &ids {
            s.insert(*t);
        }
        s.finish_loading();
        s
    };
    assert_eq!(set.len(), ids.len());
    assert!(set.segments.iter().any(|s| !s.index.is_empty()), "segments have indexes");
    for t in &ids {
        assert!(set.contains(t), "{t}");
    }
    // The neighbours of every edge that are not themselves in the set are absent.
    let present: HashSet<u128> = ids.iter().map(|t| set.key(t)).collect();
    for k in &edges {
        for n in [k.wrapping_sub(1), k.wrapping_add(1), k.wrapping_add(2)] {
            assert_eq!(set.contains(&id_of(&set, n)), present.contains(&n), "key {n:#x}");
        }
    }
    // And every bucket boundary of every index: the first key of each bucket and one below it.
    for seg in set.segments.iter() {
        for w in seg.index.windows(2).filter(|w| w[0] < w[1]) {
            let first = seg.keys[w[0] as usize];
            assert!(set.contains(&id_of(&set, first)));
            let below = first.wrapping_sub(1);
            assert_eq!(set.contains(&id_of(&set, below)), present.contains(&below));
        }
    }
}

#[test]
fn duplicates_count_once() {
    let mut rng = Rng(3);
    let ids: Vec<TokenId> = (0..2_000).map(|_| rng.tid()).collect();
    // Loading with every id twice.
    let twice: Vec<TokenId> = ids.iter().chain(ids.iter()).copied().collect();
    let mut set = loaded(&twice);
    assert_eq!(set.len(), ids.len());
    // Inserting ids already in the sorted keys or in a delta changes nothing.
    for t in &ids {
        assert_eq!(set.insert(*t), None);
    }
    assert_eq!(set.len(), ids.len());
    assert_eq!(set.delta_len(), 0);
    let new = rng.tid();
    set.insert(new);
    set.insert(new);
    assert_eq!(set.len(), ids.len() + 1);
    assert_eq!(set.delta_len(), 1);
}

#[test]
fn inserts_after_loading_go_to_the_delta_then_merge() {
    let mut rng = Rng(4);
    let ids: Vec<TokenId> = (0..100_000).map(|_| rng.tid()).collect();
    let mut set = loaded(&ids);
    let mut added = Vec::new();
    let mut merges = 0;
    while merges < 300 {
        let t = rng.tid();
        added.push(t);
        if let Some(s) = set.insert(t) {
            assert!(set.segments[s].wants_merge());
            set.merge(s);
            assert_eq!(set.segments[s].delta.len(), 0);
            merges += 1;
        }
        assert!(set.contains(&t));
    }
    assert_eq!(set.len(), ids.len() + added.len());
    // Each delta stays below its threshold: a small share of the set.
    assert!(set.delta_len() <= SEGMENTS * (DELTA_MIN + 1), "{}", set.delta_len());
    for t in ids.iter().chain(&added) {
        assert!(set.contains(t));
    }
    for _ in 0..10_000 {
        assert!(!set.contains(&rng.tid()));
    }
}

#[test]
fn a_stale_rebuild_is_refused_and_loses_nothing() {
    let mut rng = Rng(5);
    let mut set = loaded(&(0..10_000).map(|_| rng.tid()).collect::<Vec<_>>());
    // Ids in segment 7, added to its delta.
    let in_seven = |set: &RevokedSet, rng: &mut Rng| id_of(set, (7u128 << 120) | (rng.next() as u128) << 8);
    let first: Vec<TokenId> = (0..10).map(|_| in_seven(&set, &mut rng)).collect();
    for t in &first {
        set.insert(*t);
    }
    let stale = set.merged(7).unwrap();
    let current = set.merged(7).unwrap();
    // Added after both rebuilds were made: must survive either install.
    let late = in_seven(&set, &mut rng);
    set.insert(late);
    assert!(set.install(current));
    assert!(!set.install(stale), "made from the version before");
    let len = set.len();
    assert_eq!(len, 10_000 + first.len() + 1);
    assert_eq!(set.segments[7].delta.len(), 1, "the late id waits in the delta");
    for t in first.iter().chain([&late]) {
        assert!(set.contains(t));
    }
    set.merge(7);
    assert_eq!(set.len(), len);
    assert!(set.contains(&late));
    assert!(set.merged(SEGMENTS).is_none());
}

#[test]
fn matches_a_hash_set_under_random_operations() {
    for seed in 1..=8u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let start: Vec<TokenId> = (0..rng.below(3_000)).map(|_| rng.tid()).collect();
        let mut model: HashSet<TokenId> = start.iter().copied().collect();
        let mut set = if seed % 2 == 0 { loaded(&start) } else { RevokedSet::new() };
        if seed % 2 == 1 {
            for t in &start {
                if let Some(s) = set.insert(*t) {
                    set.merge(s);
                }
            }
        }
        let mut known: Vec<TokenId> = start.clone();
        let mut pending: Vec<Merged> = Vec::new();
        for _ in 0..20_000 {
            match rng.below(10) {
                0..=3 => {
                    let t = rng.tid();
                    known.push(t);
                    model.insert(t);
                    if let Some(s) = set.insert(t) {
                        // Sometimes merge now, sometimes later (possibly after another merge).
                        match rng.below(3) {
                            0 => set.merge(s),
                            1 => pending.extend(set.merged(s)),
                            _ => {}
                        }
                    }
                }
                4 if !known.is_empty() => {
                    let t = known[rng.below(known.len())];
                    set.insert(t); // a repeat
                }
                5 => {
                    if let Some(m) = pending.pop() {
                        set.install(m);
                    }
                }
                6 => set.merge(rng.below(SEGMENTS)),
                _ => {
                    let t = if known.is_empty() || rng.below(2) == 0 {
                        rng.tid()
                    } else {
                        known[rng.below(known.len())]
                    };
                    assert_eq!(set.contains(&t), model.contains(&t), "seed {seed}");
                }
            }
            assert_eq!(set.len(), model.len(), "seed {seed}");
        }
        for t in &known {
            assert!(set.contains(t), "seed {seed}");
        }
    }
}

#[test]
fn a_lookup_searches_a_few_keys_for_random_ids() {
    // The work of a lookup, counted: the longest run any key lands in.
    let mut rng = Rng(6);
    let set = loaded(&(0..200_000).map(|_| rng.tid()).collect::<Vec<_>>());
    let mut longest = 0;
    let mut total = 0usize;
    for seg in set.segments.iter() {
        assert!(!seg.index.is_empty());
        for w in seg.index.windows(2) {
            let run = (w[1] - w[0]) as usize;
            longest = longest.max(run);
            total += run * run;
        }
    }
    // Mean run seen by a key (sum of squares / n) is a few keys; the longest a few dozen at most.
    assert!(total / set.len() <= 2 * BUCKET_IDS, "{}", total / set.len());
    assert!(longest <= 32, "{longest}");
}

#[test]
fn memory_follows_revocations_with_merges() {
    let mem = crate::memory::Memory::new();
    let mut rng = Rng(7);
    mem.begin_revoked_load(1_000);
    let first: Vec<TokenId> = (0..1_000).map(|_| rng.tid()).collect();
    for t in &first {
        mem.revoke(*t);
    }
    mem.finish_revoked_load();
    assert_eq!(mem.revoked_count(), 1_000);
    // Enough later revocations that every segment merges at least once.
    let later: Vec<TokenId> = (0..SEGMENTS * (DELTA_MIN + 2) * 2).map(|_| rng.tid()).collect();
    for t in &later {
        mem.revoke(*t);
        mem.revoke(*t);
    }
    assert_eq!(mem.revoked_count(), first.len() + later.len());
    for t in first.iter().chain(&later) {
        assert!(mem.is_revoked(t));
    }
    assert!(!mem.is_revoked(&rng.tid()));
    let r = mem.revoked.read().unwrap();
    assert!(r.delta_len() < later.len() / 2, "merged: {} still in deltas", r.delta_len());
}
