//! The signature memo: token texts whose signature chain verified, so that the same token
//! presented again skips base64, parsing and the HMAC chain. Everything that depends on the
//! request is still checked on every call (each caveat against the context, the subject,
//! revocation); only the context-free part, "these exact bytes carry a valid signature under
//! these keys", is remembered.
//!
//! Soundness rests on four rules, each with a test:
//! - only tokens that verified completely are remembered, so a forged or tampered text is never
//!   an entry and always goes through the chain;
//! - a lookup matches the whole text, compared in constant time, never a hash or a prefix;
//! - an entry holds the key generation ([`KeyProvider::generation`](crate::KeyProvider)) read
//!   before its verification started: any key change (rotation, key revocation) makes every
//!   older entry a miss, and a verification racing with the change cannot outlive it;
//!   generations come from one process-wide counter ([`new_key_generation`]), so two providers
//!   sharing a memo never share one;
//! - tokens with third-party caveats (and requests with discharges) are never remembered.
//!
//! Each thread keeps its last few hits in front of the shared map ([`MEMO_FRONT`] entries, under the
//! same rules: the whole text, the key generation, and the memo's own identity and clearings),
//! each with its own copy of the verification: a token verified again and again on several
//! threads then takes no lock and touches no count that another thread writes (each would pass
//! its cache line between the cores on every request).

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::caveat::Restrictions;
use crate::token::Token;

/// A token that verified, with its folded restrictions, as [`Verifier::verify_text`] returns it
/// (shared with the memo: cloning is one reference count).
///
/// [`Verifier::verify_text`]: crate::Verifier::verify_text
#[derive(Debug, Clone)]
pub struct VerifiedText(Arc<Shared>);

/// What a [`VerifiedText`] and its clones share: one allocation, so that taking a remembered
/// verification from the memo touches one reference count (the memo's hits are shared by every
/// thread verifying the same token, and each count they touch is a cache line passed between
/// cores).
#[derive(Debug)]
struct Shared {
    token: Token,
    restrictions: Arc<Restrictions>,
    /// The caller's rendering of the restrictions, kept as long as the token is remembered.
    rendered: OnceLock<Box<[u8]>>,
}

impl VerifiedText {
    /// The verified token.
    pub fn token(&self) -> &Token {
        &self.0.token
    }

    /// Everything the token allows, folded together (as [`Verified::restrictions`]).
    ///
    /// [`Verified::restrictions`]: crate::Verified::restrictions
    pub fn restrictions(&self) -> &Restrictions {
        &self.0.restrictions
    }

    /// The restrictions, shared (for work that outlives the request, such as a database write).
    pub fn shared_restrictions(&self) -> Arc<Restrictions> {
        Arc::clone(&self.0.restrictions)
    }

    /// The caller's rendering of the restrictions (the service's JSON answer, say): `render`
    /// runs the first time, and the bytes are kept with the token while the memo remembers it.
    /// They must depend on the restrictions alone, never on the request.
    pub fn rendered<E>(&self, render: impl FnOnce(&Restrictions) -> Result<Vec<u8>, E>) -> Result<&[u8], E> {
        if let Some(bytes) = self.0.rendered.get() {
            return Ok(bytes);
        }
        let bytes = render(&self.0.restrictions)?.into_boxed_slice();
        Ok(self.0.rendered.get_or_init(|| bytes))
    }

    pub(crate) fn new(token: Token, restrictions: Restrictions) -> Self {
        VerifiedText(Arc::new(Shared {
            token,
            restrictions: Arc::new(restrictions),
            rendered: OnceLock::new(),
        }))
    }

    /// A copy of its own (the token and any kept answer copied, the restrictions shared): what
    /// a thread's front keeps, so that its clones count on a line no other thread writes.
    fn own_copy(&self) -> Self {
        let rendered = OnceLock::new();
        if let Some(bytes) = self.0.rendered.get() {
            let _ = rendered.set(bytes.clone());
        }
        VerifiedText(Arc::new(Shared {
            token: self.0.token.clone(),
            restrictions: Arc::clone(&self.0.restrictions),
            rendered,
        }))
    }
}

/// Hits a thread keeps in front of the shared map (the oldest goes first): at most this many
/// texts of at most [`MEMO_MAX_TEXT`] bytes each, per thread that verifies.
pub const MEMO_FRONT: usize = 4;

/// One hit in a thread's front: where it came from (the memo, its clearing count, the slot and
/// the key generation) and the whole text, zeroized when it goes.
struct FrontEntry {
    memo: u64,
    cleared: u64,
    slot: u64,
    generation: u64,
    text: Zeroizing<Box<str>>,
    verified: VerifiedText,
}

thread_local! {
    static FRONTS: RefCell<Vec<FrontEntry>> = const { RefCell::new(Vec::new()) };
}

/// Identities of memos, never reused in a process (a front entry names its memo by it).
static NEXT_MEMO: AtomicU64 = AtomicU64::new(1);

struct Entry {
    /// The exact token text (a bearer credential: zeroized when the entry goes).
    text: Zeroizing<Box<str>>,
    generation: u64,
    verified: VerifiedText,
}

struct Inner {
    /// By [`SignatureMemo::slot`]; on a collision the newer entry replaces the older.
    map: HashMap<u64, Entry>,
    bytes: usize,
}

/// Token texts that verified, bounded in entries and bytes; when either bound would be passed
/// it starts over. `Debug` shows only the count.
///
/// ```
/// use tessera_core::{Context, Identifier, KeyId, RootKey, SignatureMemo, StaticKeys, Token, TokenId, Verifier};
///
/// let secret = RootKey::generate()?;
/// let kid = KeyId::generate()?;
/// let id = Identifier::new(kid, TokenId::generate()?, "alice")?;
/// let text = Token::mint_tessera(None, &secret, &id)?.attenuate("allow read")?.encode();
/// let mut keys = StaticKeys::new();
/// keys.insert(kid, secret);
///
/// let memo = SignatureMemo::default();
/// let verifier = Verifier::with_keys(&keys).memo(&memo);
/// let ctx = Context::now().operation("read");
/// verifier.verify_text(&text, &ctx)?; // the chain is computed, the text remembered
/// let again = verifier.verify_text(&text, &ctx)?; // no chain: the caveats are checked
/// assert_eq!(again.restrictions().subject.as_deref(), Some("alice"));
/// assert!(verifier.verify_text(&text, &ctx.operation("write")).is_err());
/// assert_eq!(memo.len(), 1);
/// # Ok::<(), tessera_core::Error>(())
/// ```
pub struct SignatureMemo {
    hasher: RandomState,
    inner: RwLock<Inner>,
    max_entries: usize,
    max_bytes: usize,
    /// This memo's identity, for the threads' fronts.
    id: u64,
    /// How many times it was cleared: a front entry taken before a clearing is a miss. Changed
    /// only under the map's write lock, with the map.
    cleared: AtomicU64,
}

/// Constant-time equality of two texts (their lengths are not secret), eight bytes at a time:
/// `subtle` byte by byte cost more than the rest of a remembered verification.
fn same_text(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // Differences gathered eight bytes at a time, without branching on them; `subtle` decides.
    let word = |c: &[u8]| c.iter().rev().fold(0u64, |w, b| w << 8 | u64::from(*b));
    let (mut xs, mut ys) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut diff = 0u64;
    for (x, y) in xs.by_ref().zip(ys.by_ref()) {
        diff |= word(x) ^ word(y);
    }
    diff |= word(xs.remainder()) ^ word(ys.remainder());
    let same: Choice = diff.ct_eq(&0);
    same.into()
}

/// A key generation no provider in this process has had: what a [`KeyProvider`] returns from
/// [`generation`](KeyProvider::generation) after each change of its keys. Values never repeat
/// (a process-wide counter), so a memo shared by two providers never takes a token one of them
/// verified for the other's.
///
/// [`KeyProvider`]: crate::KeyProvider
pub fn new_key_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Texts longer than this are not remembered (a typical token is a few hundred bytes).
pub const MEMO_MAX_TEXT: usize = 4 * 1024;

impl SignatureMemo {
    /// A memo of at most `max_entries` texts and `max_bytes` of text in all.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        SignatureMemo {
            hasher: RandomState::new(),
            inner: RwLock::new(Inner { map: HashMap::new(), bytes: 0 }),
            max_entries,
            max_bytes,
            id: NEXT_MEMO.fetch_add(1, Ordering::Relaxed),
            cleared: AtomicU64::new(0),
        }
    }

    /// Where `text` is kept: a keyed hash of its last 64 bytes, which hold the signature (unique
    /// to each token; texts that share them share a slot, and the whole text decides).
    fn slot(&self, text: &str) -> u64 {
        let b = text.as_bytes();
        self.hasher.hash_one(&b[b.len().saturating_sub(64)..])
    }

    /// The remembered verification of exactly `text` under key generation `generation`.
    pub(crate) fn get(&self, text: &str, generation: u64) -> Option<VerifiedText> {
        let h = self.slot(text);
        let cleared = self.cleared.load(Ordering::Acquire);
        let front = FRONTS.try_with(|f| {
            let f = f.try_borrow().ok()?;
            f.iter()
                .find(|e| {
                    e.memo == self.id
                        && e.cleared == cleared
                        && e.slot == h
                        && e.generation == generation
                        && same_text(e.text.as_bytes(), text.as_bytes())
                })
                .map(|e| e.verified.clone())
        });
        if let Ok(Some(hit)) = front {
            return Some(hit);
        }
        let (hit, cleared) = {
            let inner = self.inner.read().ok()?;
            let e = inner.map.get(&h)?;
            let hit = (e.generation == generation && same_text(e.text.as_bytes(), text.as_bytes()))
                .then(|| e.verified.clone())?;
            // Read under the lock that clearing takes to write it: the pair is consistent.
            (hit, self.cleared.load(Ordering::Acquire))
        };
        let entry = FrontEntry {
            memo: self.id,
            cleared,
            slot: h,
            generation,
            text: Zeroizing::new(text.into()),
            verified: hit.own_copy(),
        };
        let _ = FRONTS.try_with(|f| {
            if let Ok(mut f) = f.try_borrow_mut() {
                // One entry per memo and slot, as in the map; then the oldest goes first.
                f.retain(|e| !(e.memo == self.id && e.slot == h));
                if f.len() >= MEMO_FRONT {
                    f.remove(0);
                }
                f.push(entry);
            }
        });
        Some(hit)
    }

    /// Remember that `text` verified under key generation `generation`.
    pub(crate) fn insert(&self, text: &str, generation: u64, verified: &VerifiedText) {
        if text.len() > MEMO_MAX_TEXT || text.len() > self.max_bytes || self.max_entries == 0 {
            return;
        }
        let h = self.slot(text);
        let Ok(mut inner) = self.inner.write() else { return };
        if inner.map.len() >= self.max_entries || inner.bytes + text.len() > self.max_bytes {
            inner.map.clear();
            inner.bytes = 0;
        }
        let entry = Entry { text: Zeroizing::new(text.into()), generation, verified: verified.clone() };
        inner.bytes += text.len();
        if let Some(old) = inner.map.insert(h, entry) {
            inner.bytes -= old.text.len();
        }
    }

    /// Number of remembered texts.
    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.map.len()).unwrap_or(0)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget everything (the threads' fronts included: what they took before is a miss).
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.write() {
            inner.map.clear();
            inner.bytes = 0;
            self.cleared.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Default for SignatureMemo {
    /// 16,384 texts and 8 MiB of text: about 30 MiB of memory when full of 5-caveat tokens
    /// (about 1.9 KiB an entry with the token, its restrictions and a kept answer, measured by
    /// the `memo_memory` example of `tessera-peers`); and each thread that verifies keeps its
    /// last [`MEMO_FRONT`] hits (each text at most [`MEMO_MAX_TEXT`] bytes).
    fn default() -> Self {
        Self::new(16_384, 8 << 20)
    }
}

impl std::fmt::Debug for SignatureMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignatureMemo({} entries)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identifier, KeyId, RootKey, TokenId};

    /// A token text and its verification as the verifier would remember it.
    fn verified(subject: &str) -> (String, VerifiedText) {
        let secret = RootKey::generate().unwrap();
        let id = Identifier::new(KeyId::generate().unwrap(), TokenId::generate().unwrap(), subject).unwrap();
        let token = Token::mint_tessera(None, &secret, &id).unwrap();
        let r = Restrictions { subject: Some(subject.into()), ..Restrictions::default() };
        (token.encode(), VerifiedText::new(token, r))
    }

    fn front_len() -> usize {
        FRONTS.with(|f| f.borrow().len())
    }

    #[test]
    fn a_hit_goes_to_the_threads_front_which_keeps_the_memos_rules() {
        // Each test runs on a thread of its own: its front starts empty.
        let memo = SignatureMemo::default();
        let (text, v) = verified("alice");
        memo.insert(&text, 7, &v);
        let first = memo.get(&text, 7).unwrap();
        assert!(Arc::ptr_eq(&first.0, &v.0), "the first hit is the shared entry");
        assert_eq!(front_len(), 1);
        let second = memo.get(&text, 7).unwrap();
        let third = memo.get(&text, 7).unwrap();
        assert!(!Arc::ptr_eq(&second.0, &v.0), "later hits are the thread's own copy");
        assert!(Arc::ptr_eq(&second.0, &third.0));
        assert_eq!(second.restrictions(), v.restrictions());
        assert_eq!(second.token().encode(), text);
        // The whole text, the generation and the memo decide, as in the map.
        assert!(memo.get(&text[..text.len() - 1], 7).is_none());
        assert!(memo.get(&text, 8).is_none(), "another key generation is a miss");
        let other = SignatureMemo::default();
        assert!(other.get(&text, 7).is_none(), "another memo never answers from this one's front");
        // A clearing empties the fronts too.
        memo.clear();
        assert!(memo.get(&text, 7).is_none());
        // Another thread's front is its own.
        memo.insert(&text, 7, &v);
        assert!(memo.get(&text, 7).is_some());
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(front_len(), 0);
                memo.get(&text, 7).unwrap();
                assert_eq!(front_len(), 1);
            });
        });
    }

    #[test]
    fn the_front_keeps_the_last_hits_only() {
        let memo = SignatureMemo::default();
        let tokens: Vec<_> = (0..MEMO_FRONT + 3).map(|i| verified(&format!("user{i}"))).collect();
        for (text, v) in &tokens {
            memo.insert(text, 1, v);
            memo.get(text, 1).unwrap();
            memo.get(text, 1).unwrap();
            assert!(front_len() <= MEMO_FRONT);
        }
        assert_eq!(front_len(), MEMO_FRONT);
        let kept: Vec<String> = FRONTS.with(|f| f.borrow().iter().map(|e| e.text.to_string()).collect());
        let last: Vec<String> = tokens[3..].iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(kept, last, "the oldest went first");
        // Every one still answers, from the map when not from the front.
        for (text, v) in &tokens {
            assert_eq!(memo.get(text, 1).unwrap().restrictions(), v.restrictions());
        }
    }

    #[test]
    fn texts_are_equal_exactly_when_every_byte_is() {
        let a = b"AgEWaHR0cHM6Ly90ZXNzZXJhLmV4YW1wbGUCMA";
        assert!(same_text(a, a));
        assert!(same_text(b"", b""));
        for i in 0..a.len() {
            let mut b = *a;
            b[i] ^= 1;
            assert!(!same_text(a, &b), "differs at {i}");
        }
        assert!(!same_text(a, &a[..a.len() - 1]));
        // A shorter text padded with zeros is still a different text; tails count.
        assert!(!same_text(b"abc", b"abc\0"));
        assert!(!same_text(b"abcdefgh1", b"abcdefgh2"));
        assert!(same_text(b"abcdefgh12", b"abcdefgh12"));
    }
}
