//! The set of revoked token ids a node holds in memory: about 17 bytes per id instead of a hash
//! set's 29 to 58, with an exact answer (no false positives, no false negatives).
//!
//! Layout: each id is turned into a key by multiplying it with a secret odd 128-bit number (a
//! bijection, so keys are exactly as distinct as ids, and their top bits depend on every bit of
//! the id, whatever structure the ids have). The top 8 bits of the key choose one of 256
//! segments; a segment holds its keys sorted in one array, with an index of `u32` offsets by
//! the next bits of the key (a bucket per at most [`BUCKET_IDS`] keys), so a lookup is one
//! multiplication, two index reads and a search of a bucket of a few keys: constant time for
//! random ids, and never worse than a binary search of one segment.
//!
//! Revocations applied after the set was built go to the segment's small `delta` hash set;
//! when that grows past [`DELTA_SHARE`] of the segment, the segment is rebuilt with them
//! ([`RevokedSet::merged`], under a read lock, beside verification) and swapped in
//! ([`RevokedSet::install`], the only step that waits for readers). One segment is 1/256 of
//! the set, so a merge never holds a second copy of more than that.
//!
//! At open the set is loaded in one pass ([`RevokedSet::loading`]): each segment is reserved
//! from the expected count, filled unsorted, then sorted in place ([`RevokedSet::finish_loading`]);
//! nothing is copied and no array regrows, so the peak is the final size.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use tessera_core::TokenId;

/// log2 of the number of segments.
const SEGMENT_BITS: u32 = 8;
const SEGMENTS: usize = 1 << SEGMENT_BITS;
/// Keys per index bucket, at most on average: the index costs 4 / `BUCKET_IDS` to 8 /
/// `BUCKET_IDS` bytes per id, and a lookup searches a bucket of about this many keys.
const BUCKET_IDS: usize = 4;
/// A segment is rebuilt once its delta holds more than 1 / `DELTA_SHARE` of its sorted keys (and
/// more than [`DELTA_MIN`]): the delta then costs about 1 byte per id, and each revocation pays
/// for copying `DELTA_SHARE` keys, amortized.
const DELTA_SHARE: usize = 32;
const DELTA_MIN: usize = 64;
/// The largest count [`RevokedSet::loading`] reserves for (4 GiB of keys); past it the segments
/// grow as they fill, so a wrong expectation cannot ask for absurd memory.
const MAX_RESERVE: usize = 1 << 28;

/// Hashes a delta key, which is already a multiplicative hash of the id under a secret
/// multiplier: its bits are taken as they are. Bits 56..120 are used because the top 8 bits are
/// the same for every key of a segment.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u128` keys (see `write_u128`); folds anything else.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = (key >> 56) as u64;
    }
}

type Delta = HashSet<u128, BuildHasherDefault<KeyHasher>>;

/// One 256th of the set.
#[derive(Default)]
struct Segment {
    /// The keys, sorted and distinct (unsorted, possibly repeated, while loading).
    keys: Vec<u128>,
    /// `index[b]..index[b + 1]` is where bucket `b` lies in `keys`; empty for a segment too
    /// small to need one (and while loading).
    index: Box<[u32]>,
    /// How far a key (shifted left by [`SEGMENT_BITS`]) is shifted right to give its bucket.
    shift: u32,
    /// Keys added since `keys` was built.
    delta: Delta,
    /// Changes at each rebuild, so a rebuild made from an older version is refused.
    version: u64,
}

impl Segment {
    /// A segment of `keys`, which must be sorted and distinct.
    fn build(keys: Vec<u128>, version: u64) -> Segment {
        let wanted = keys.len() / BUCKET_IDS;
        let bits =
            if wanted < 2 { 0 } else { wanted.next_power_of_two().ilog2().min(u128::BITS - SEGMENT_BITS) };
        let mut seg = Segment {
            keys,
            index: Box::default(),
            shift: u128::BITS - bits,
            delta: Delta::default(),
            version,
        };
        if bits > 0 {
            let mut index = vec![0u32; (1 << bits) + 1].into_boxed_slice();
            for &k in &seg.keys {
                index[seg.bucket(k) + 1] += 1;
            }
            for b in 1..index.len() {
                index[b] += index[b - 1];
            }
            seg.index = index;
        }
        seg
    }

    fn bucket(&self, key: u128) -> usize {
        // `shift` is 128 when there is one bucket: `checked_shr` gives bucket 0 then.
        (key << SEGMENT_BITS).checked_shr(self.shift).unwrap_or(0) as usize
    }

    /// Whether the sorted keys hold `key`.
    fn in_keys(&self, key: u128) -> bool {
        let run = if self.index.is_empty() {
            &self.keys[..]
        } else {
            let b = self.bucket(key);
            let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
            &self.keys[lo..hi]
        };
        if run.len() <= 8 {
            run.contains(&key)
        } else {
            run.binary_search(&key).is_ok()
        }
    }

    fn contains(&self, key: u128, loading: bool) -> bool {
        if loading {
            return self.keys.contains(&key);
        }
        self.in_keys(key) || (!self.delta.is_empty() && self.delta.contains(&key))
    }

    fn len(&self) -> usize {
        self.keys.len() + self.delta.len()
    }

    fn wants_merge(&self) -> bool {
        self.delta.len() > DELTA_MIN.max(self.keys.len() / DELTA_SHARE)
    }
}

/// A segment rebuilt with its delta by [`RevokedSet::merged`], for [`RevokedSet::install`].
pub struct Merged {
    segment: usize,
    /// The version of the segment it was made from.
    from: u64,
    built: Segment,
}

/// An exact set of token ids, compact in memory (see the module docs for the layout).
pub struct RevokedSet {
    /// Odd, secret: keys are `id * multiplier` (mod 2^128).
    multiplier: u128,
    segments: Box<[Segment]>,
    len: usize,
    /// Between [`RevokedSet::loading`] and [`RevokedSet::finish_loading`].
    loading: bool,
}

impl Default for RevokedSet {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RevokedSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevokedSet").field("len", &self.len).field("loading", &self.loading).finish()
    }
}

impl RevokedSet {
    /// An empty set.
    pub fn new() -> Self {
        // Any odd number keeps keys distinct; a random one keeps ids chosen by someone else from
        // crowding one bucket. Without randomness, a fixed odd constant (still exact).
        let random = TokenId::generate().map(|t| u128::from_le_bytes(*t.as_bytes())).unwrap_or(0);
        RevokedSet {
            multiplier: (random ^ 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1,
            segments: (0..SEGMENTS).map(|_| Segment::default()).collect(),
            len: 0,
            loading: false,
        }
    }

    /// An empty set ready to take about `expected` ids with [`RevokedSet::insert`] and then
    /// [`RevokedSet::finish_loading`]: each segment reserves its share up front (plus room for
    /// the spread of random ids), so filling it copies nothing. Until `finish_loading`,
    /// [`RevokedSet::contains`] is exact but linear.
    pub fn loading(expected: usize) -> Self {
        let mut set = Self::new();
        let share = expected.min(MAX_RESERVE) / SEGMENTS;
        let reserve = if expected == 0 { 0 } else { share + share / 16 + 32 };
        for seg in set.segments.iter_mut() {
            seg.keys.reserve_exact(reserve);
        }
        set.loading = true;
        set
    }

    /// Sort and index what was loaded (a no-op on a set that is not loading).
    pub fn finish_loading(&mut self) {
        if !self.loading {
            return;
        }
        for seg in self.segments.iter_mut() {
            let mut keys = std::mem::take(&mut seg.keys);
            keys.sort_unstable();
            keys.dedup();
            keys.shrink_to_fit();
            *seg = Segment::build(keys, 0);
        }
        self.len = self.segments.iter().map(Segment::len).sum();
        self.loading = false;
    }

    fn key(&self, tid: &TokenId) -> u128 {
        u128::from_le_bytes(*tid.as_bytes()).wrapping_mul(self.multiplier)
    }

    fn segment_of(key: u128) -> usize {
        (key >> (u128::BITS - SEGMENT_BITS)) as usize
    }

    /// Whether `tid` is in the set.
    pub fn contains(&self, tid: &TokenId) -> bool {
        let key = self.key(tid);
        self.segments[Self::segment_of(key)].contains(key, self.loading)
    }

    /// Add `tid`. Returns the segment to rebuild when its delta has grown enough: pass it to
    /// [`RevokedSet::merged`] (or [`RevokedSet::merge`]). Adding an id already there changes
    /// nothing.
    pub fn insert(&mut self, tid: TokenId) -> Option<usize> {
        let key = self.key(&tid);
        let s = Self::segment_of(key);
        let seg = &mut self.segments[s];
        if self.loading {
            // Repeats are removed by `finish_loading`, which also counts.
            seg.keys.push(key);
            self.len += 1;
            return None;
        }
        if seg.in_keys(key) || !seg.delta.insert(key) {
            return None;
        }
        self.len += 1;
        seg.wants_merge().then_some(s)
    }

    /// Segment `segment` rebuilt with its delta (reads only: call it under a read lock, beside
    /// lookups). `None` for a segment out of range or while loading.
    pub fn merged(&self, segment: usize) -> Option<Merged> {
        let seg = self.segments.get(segment).filter(|_| !self.loading)?;
        let mut added: Vec<u128> = seg.delta.iter().copied().collect();
        added.sort_unstable();
        let mut keys = Vec::with_capacity(seg.keys.len() + added.len());
        let (mut a, mut b) = (seg.keys.iter().peekable(), added.iter().peekable());
        // Both sorted and disjoint (a key enters the delta only when not in `keys`).
        while let (Some(&&x), Some(&&y)) = (a.peek(), b.peek()) {
            if x < y {
                keys.push(x);
                a.next();
            } else {
                keys.push(y);
                b.next();
            }
        }
        keys.extend(a);
        keys.extend(b);
        Some(Merged { segment, from: seg.version, built: Segment::build(keys, seg.version.wrapping_add(1)) })
    }

    /// Swap in a segment made by [`RevokedSet::merged`]. Refused (returns `false`, nothing
    /// changes) when the segment was rebuilt since; keys added to the delta since stay there.
    pub fn install(&mut self, merged: Merged) -> bool {
        let Some(seg) = self.segments.get_mut(merged.segment) else { return false };
        if seg.version != merged.from || self.loading {
            return false;
        }
        let mut built = merged.built;
        let before = seg.len();
        let mut delta = std::mem::take(&mut seg.delta);
        delta.retain(|k| !built.in_keys(*k));
        if delta.capacity() > 2 * delta.len() + DELTA_MIN {
            delta.shrink_to_fit();
        }
        built.delta = delta;
        self.len = self.len - before + built.len();
        *seg = built;
        true
    }

    /// [`RevokedSet::merged`] and [`RevokedSet::install`] in one step.
    pub fn merge(&mut self, segment: usize) {
        if let Some(m) = self.merged(segment) {
            self.install(m);
        }
    }

    /// How many ids the set holds (while loading: how many were inserted, repeats included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set holds no id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many ids wait in deltas (for tests and the benchmarks).
    pub fn delta_len(&self) -> usize {
        self.segments.iter().map(|s| s.delta.len()).sum()
    }
}

#[cfg(test)]
mod tests;
