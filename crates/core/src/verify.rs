//! The verifier: recompute the chain, check every caveat, use every discharge exactly once.

use std::collections::HashMap;
use std::sync::RwLock;

use zeroize::Zeroizing;

use crate::caveat::{Context, Failure, Predicate, Restrictions};
use crate::crypto::{self, RootKey, Tag, TokenKey};
use crate::error::{Error, Result};
use crate::id::{Identifier, KeyId, TokenId};
use crate::limits::{MAX_DISCHARGES, MAX_DISCHARGE_DEPTH};
use crate::memo::{SignatureMemo, VerifiedText};
use crate::token::{Caveat, Token};

/// Chooses the root key for a Tessera token. The key store implements it.
pub trait KeyProvider {
    /// The per-token root key for `tid` under `kid` (see [`RootKey::token_key`]), or `None` when
    /// the key is unknown or revoked.
    fn token_key(&self, kid: &KeyId, tid: &TokenId) -> Option<TokenKey>;

    /// The key the signature chain of `tid` starts from: the per-token key, derived
    /// (`derive(token_key)`). Providers that see the same tokens again cache it
    /// ([`ChainKeyCache`]).
    fn chain_key(&self, kid: &KeyId, tid: &TokenId) -> Option<Zeroizing<[u8; 32]>> {
        self.token_key(kid, tid).map(|k| k.derived())
    }

    /// Whether the token family `tid` has been revoked. Checked after the signature.
    fn is_revoked(&self, _tid: &TokenId) -> bool {
        false
    }

    /// A number that changes whenever any key changes (added, rotated, revoked), for the
    /// [`SignatureMemo`]: take each from [`new_key_generation`](crate::new_key_generation), so
    /// that no two providers ever have the same one. `None` (the default) means the provider
    /// cannot say, and nothing is remembered.
    fn generation(&self) -> Option<u64> {
        None
    }
}

/// The chain keys of recently verified token families, so that verifying a token again skips
/// its per-token key and derivation (four SHA-256 compressions). Bounded: when full it starts
/// over. Entries are zeroized when dropped; `Debug` shows only the count.
pub struct ChainKeyCache {
    map: RwLock<HashMap<(KeyId, TokenId), Zeroizing<Tag>>>,
    limit: usize,
}

impl ChainKeyCache {
    /// A cache of at most `limit` token families.
    pub fn new(limit: usize) -> Self {
        ChainKeyCache { map: RwLock::new(HashMap::new()), limit }
    }

    /// The cached chain key of (`kid`, `tid`), or `derive`'s answer, cached.
    pub fn get_or(
        &self,
        kid: &KeyId,
        tid: &TokenId,
        derive: impl FnOnce() -> Option<TokenKey>,
    ) -> Option<Zeroizing<[u8; 32]>> {
        if let Some(k) = self.map.read().ok().and_then(|m| m.get(&(*kid, *tid)).cloned()) {
            return Some(k);
        }
        let key = derive()?.derived();
        if let Ok(mut m) = self.map.write() {
            if m.len() >= self.limit {
                m.clear();
            }
            m.insert((*kid, *tid), key.clone());
        }
        Some(key)
    }

    /// Forget everything (keys changed).
    pub fn clear(&self) {
        if let Ok(mut m) = self.map.write() {
            m.clear();
        }
    }
}

impl Default for ChainKeyCache {
    fn default() -> Self {
        Self::new(65_536)
    }
}

impl std::fmt::Debug for ChainKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.read().map(|m| m.len()).unwrap_or(0);
        write!(f, "ChainKeyCache({n} entries)")
    }
}

/// A fixed set of root keys in memory (tests, the CLI's `--key-file`).
#[derive(Default, Debug)]
pub struct StaticKeys {
    keys: HashMap<KeyId, RootKey>,
    cache: ChainKeyCache,
    generation: u64,
}

impl StaticKeys {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a key.
    pub fn insert(&mut self, kid: KeyId, key: RootKey) {
        self.keys.insert(kid, key);
        self.cache.clear();
        self.generation = crate::memo::new_key_generation();
    }
}

impl KeyProvider for StaticKeys {
    fn token_key(&self, kid: &KeyId, tid: &TokenId) -> Option<TokenKey> {
        self.keys.get(kid).map(|k| k.token_key(tid))
    }

    fn chain_key(&self, kid: &KeyId, tid: &TokenId) -> Option<Zeroizing<[u8; 32]>> {
        self.cache.get_or(kid, tid, || self.token_key(kid, tid))
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation)
    }
}

type GeneralChecker<'k> = Box<dyn Fn(&str, &Context) -> bool + Send + Sync + 'k>;

/// Verifies tokens against a request [`Context`].
///
/// ```
/// use tessera_core::{Context, Identifier, KeyId, RootKey, StaticKeys, Token, TokenId, Verifier};
///
/// let secret = RootKey::generate()?;
/// let kid = KeyId::generate()?;
/// let id = Identifier::new(kid, TokenId::generate()?, "alice")?;
/// let token = Token::mint_tessera(Some("https://tessera.example"), &secret, &id)?;
///
/// // Anyone holding the token can narrow it, offline.
/// let narrow = token.attenuate("allow read")?.attenuate("resource issues/42")?;
///
/// let mut keys = StaticKeys::new();
/// keys.insert(kid, secret);
/// let verifier = Verifier::with_keys(&keys);
/// let ctx = Context::now().operation("read").resource("issues/42");
/// let verified = verifier.verify(&narrow, &[], &ctx)?;
/// assert_eq!(verified.restrictions().subject.as_deref(), Some("alice"));
/// assert!(verifier.verify(&narrow, &[], &ctx.operation("write")).is_err());
/// # Ok::<(), tessera_core::Error>(())
/// ```
#[derive(Default)]
pub struct Verifier<'k> {
    keys: Option<&'k dyn KeyProvider>,
    exact: Vec<String>,
    general: Vec<GeneralChecker<'k>>,
    service: bool,
    memo: Option<&'k SignatureMemo>,
}

/// A token that passed verification, with the discharges it used.
#[derive(Debug)]
pub struct Verified<'t> {
    token: &'t Token,
    discharges: &'t [Token],
}

impl<'t> Verified<'t> {
    /// The verified token.
    pub fn token(&self) -> &'t Token {
        self.token
    }

    /// The Tessera identifier, if the token has one.
    pub fn identifier(&self) -> Option<Identifier> {
        self.token.tessera_identifier()
    }

    /// Everything the token and its discharges allow, folded together.
    pub fn restrictions(&self) -> Restrictions {
        let mut r = Restrictions::default();
        if let Some(id) = self.token.tessera_identifier() {
            r.kid = Some(id.kid);
            r.tid = Some(id.tid);
            r.subject = Some(id.sub);
            r.claims = id.claims;
        }
        for t in std::iter::once(self.token).chain(self.discharges) {
            for c in t.caveats() {
                if let Caveat::FirstParty(cid) = c {
                    if let Ok(p) = Predicate::parse(cid) {
                        r.add(&p);
                    }
                }
            }
        }
        r
    }
}

struct Run<'a, 't> {
    verifier: &'a Verifier<'a>,
    ctx: &'a Context,
    discharges: &'t [Token],
    used: u64,
    root_sig: Tag,
    pending: Option<Error>,
}

impl<'k> Verifier<'k> {
    /// A verifier without a key provider: only [`Verifier::verify_with_key`] works.
    pub fn new() -> Self {
        Self::default()
    }

    /// A verifier that chooses root keys by the Tessera identifier's key id.
    pub fn with_keys(keys: &'k dyn KeyProvider) -> Self {
        Verifier { keys: Some(keys), ..Self::default() }
    }

    /// Accept an application-defined caveat when its text equals `caveat` exactly.
    pub fn satisfy_exact(mut self, caveat: impl Into<String>) -> Self {
        self.exact.push(caveat.into());
        self
    }

    /// Accept `rate-limit` and `once` caveats here and report them in the
    /// [`Restrictions`](crate::Restrictions) (`rate_limits`, `once`): for the Tessera service,
    /// which counts and records uses after verification. Without this, they fail closed.
    pub fn service_caveats(mut self) -> Self {
        self.service = true;
        self
    }

    /// Accept application-defined caveats for which `check(text, ctx)` returns true.
    pub fn satisfy_general(mut self, check: impl Fn(&str, &Context) -> bool + Send + Sync + 'k) -> Self {
        self.general.push(Box::new(check));
        self
    }

    /// Remember token texts that verify in `memo`, for [`Verifier::verify_text`].
    pub fn memo(mut self, memo: &'k SignatureMemo) -> Self {
        self.memo = Some(memo);
        self
    }

    /// Decode and verify a Tessera token's text (without discharges).
    ///
    /// With a [`memo`](Verifier::memo) and a key provider that reports its
    /// [`generation`](KeyProvider::generation), a text that verified before under the same keys
    /// skips decoding and the signature chain; its caveats, subject and revocation are checked
    /// as on the first call, with the same errors.
    pub fn verify_text(&self, text: &str, ctx: &Context) -> Result<VerifiedText> {
        let keys = self.keys.ok_or(Error::ForeignIdentifier)?;
        // Read before verifying: a key change during this call makes the entry a miss.
        let memo = self.memo.zip(keys.generation());
        if let Some(hit) = memo.and_then(|(m, g)| m.get(text, g)) {
            self.recheck(&hit, ctx)?;
            let (_, tid) = Identifier::peek(hit.token().identifier()).ok_or(Error::ForeignIdentifier)?;
            if keys.is_revoked(&tid) {
                return Err(Error::Revoked);
            }
            return Ok(hit);
        }
        let token = Token::decode(text)?;
        let restrictions = self.verify(&token, &[], ctx)?.restrictions();
        let out = VerifiedText::new(token, restrictions);
        if let Some((m, g)) = memo {
            if out.token().caveats().all(|c| matches!(c, Caveat::FirstParty(_))) {
                m.insert(text, g, &out);
            }
        }
        Ok(out)
    }

    /// The request-dependent half of verification, for a text whose signature is known good:
    /// every caveat in order (the first failure is the answer), then the subject.
    fn recheck(&self, v: &VerifiedText, ctx: &Context) -> Result<()> {
        for c in v.token().caveats() {
            match c {
                Caveat::FirstParty(cid) => self.check(cid, ctx)?,
                // Never remembered; refuse rather than skip if one ever were.
                Caveat::ThirdParty { .. } => return Err(Error::InvalidSignature),
            }
        }
        if ctx.subject.is_some() {
            ctx.check_subject(v.restrictions().subject.as_deref())?;
        }
        Ok(())
    }

    /// Verify a Tessera token: the root key is chosen by its key id through the key provider.
    pub fn verify<'t>(
        &self,
        token: &'t Token,
        discharges: &'t [Token],
        ctx: &Context,
    ) -> Result<Verified<'t>> {
        let keys = self.keys.ok_or(Error::ForeignIdentifier)?;
        let (kid, tid) = Identifier::peek(token.identifier()).ok_or(Error::ForeignIdentifier)?;
        let key = keys.chain_key(&kid, &tid).ok_or(Error::UnknownKey(kid))?;
        let verified = self.verify_derived(token, &key, discharges, ctx)?;
        if keys.is_revoked(&tid) {
            return Err(Error::Revoked);
        }
        Ok(verified)
    }

    /// Verify any macaroon with the given root key (foreign identifiers too).
    pub fn verify_with_key<'t>(
        &self,
        token: &'t Token,
        root_key: &RootKey,
        discharges: &'t [Token],
        ctx: &Context,
    ) -> Result<Verified<'t>> {
        self.verify_derived(token, &root_key.derived(), discharges, ctx)
    }

    fn verify_derived<'t>(
        &self,
        token: &'t Token,
        derived: &Tag,
        discharges: &'t [Token],
        ctx: &Context,
    ) -> Result<Verified<'t>> {
        if discharges.len() > MAX_DISCHARGES {
            return Err(Error::TooLarge {
                what: "discharge count",
                size: discharges.len(),
                limit: MAX_DISCHARGES,
            });
        }
        let mut run = Run { verifier: self, ctx, discharges, used: 0, root_sig: *token.sig(), pending: None };
        let sig = run.chain(token, derived, 0)?;
        if !crypto::tags_equal(&sig, token.sig()) {
            return Err(Error::InvalidSignature);
        }
        if let Some(e) = run.pending {
            return Err(e);
        }
        let unused = discharges.len() - run.used.count_ones() as usize;
        if unused > 0 {
            return Err(Error::UnusedDischarge(unused));
        }
        if ctx.subject.is_some() {
            ctx.check_subject(token.tessera_identifier().as_ref().map(|id| id.sub.as_str()))?;
        }
        Ok(Verified { token, discharges })
    }

    fn check(&self, cid: &[u8], ctx: &Context) -> Result<()> {
        match Predicate::parse(cid)? {
            Predicate::RateLimit(_) | Predicate::Once if self.service => Ok(()),
            Predicate::Other(text) => {
                if self.exact.iter().any(|e| e == text) || self.general.iter().any(|f| f(text, ctx)) {
                    Ok(())
                } else {
                    Err(Error::UnknownCaveat(text.to_owned()))
                }
            }
            p => p.check(ctx).map_err(|failure| {
                let caveat = String::from_utf8_lossy(cid).into_owned();
                match failure {
                    Failure::Unmet(reason) => Error::CaveatNotMet { caveat, reason },
                    Failure::Malformed(reason) => Error::MalformedCaveat { caveat, reason },
                }
            }),
        }
    }
}

impl<'t> Run<'_, 't> {
    /// Recompute `t`'s chain from its derived root key; verifies its discharges on the way.
    fn chain(&mut self, t: &Token, derived: &Tag, depth: usize) -> Result<Tag> {
        let mut sig = crypto::hmac(derived, t.identifier());
        for c in t.caveats() {
            match c {
                Caveat::FirstParty(cid) => {
                    if self.pending.is_none() {
                        if let Err(e) = self.verifier.check(cid, self.ctx) {
                            self.pending = Some(e);
                        }
                    }
                    sig = crypto::hmac(&sig, cid);
                }
                Caveat::ThirdParty { location, id, vid } => {
                    let caveat_key = crypto::open_vid(&sig, vid)?;
                    match self.take_discharge(id) {
                        Some(d) => {
                            if depth + 1 > MAX_DISCHARGE_DEPTH {
                                return Err(Error::DischargeTooDeep(MAX_DISCHARGE_DEPTH));
                            }
                            let dsig = self.chain(d, &caveat_key, depth + 1)?;
                            if !crypto::tags_equal(&crypto::bind(&self.root_sig, &dsig), d.sig()) {
                                return Err(Error::InvalidSignature);
                            }
                        }
                        None => {
                            if self.pending.is_none() {
                                self.pending =
                                    Some(Error::MissingDischarge { location: location.to_owned() });
                            }
                        }
                    }
                    sig = crypto::chain_third_party(&sig, vid, id);
                }
            }
        }
        Ok(sig)
    }

    fn take_discharge(&mut self, id: &[u8]) -> Option<&'t Token> {
        let discharges: &'t [Token] = self.discharges;
        let i = discharges
            .iter()
            .enumerate()
            .position(|(i, d)| self.used & (1 << i) == 0 && d.identifier() == id)?;
        self.used |= 1 << i;
        discharges.get(i)
    }
}
