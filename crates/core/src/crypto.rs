//! The exact cryptography of DESIGN section 3, on RustCrypto primitives.

use std::fmt;
use std::sync::OnceLock;

use crypto_secretbox::aead::{Aead, KeyInit as _};
use crypto_secretbox::XSalsa20Poly1305;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::id::TokenId;
use crate::random::random;

type HmacSha256 = Hmac<Sha256>;

/// A 32-byte HMAC tag: a token signature or an intermediate chain key.
pub(crate) type Tag = [u8; 32];

/// Length of a third-party caveat's verification id: nonce (24) + tag (16) + sealed key (32).
pub const VID_LEN: usize = 72;
const NONCE_LEN: usize = 24;
const ZERO: Tag = [0u8; 32];

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    }
}

#[cold]
fn unreachable_hmac() -> ! {
    // HMAC's InvalidLength is impossible: every key length is valid.
    panic!("HMAC rejected a key length, which HMAC never does")
}

fn finish(m: HmacSha256) -> Tag {
    m.finalize().into_bytes().into()
}

/// `H(key, data)`.
pub(crate) fn hmac(key: &[u8], data: &[u8]) -> Tag {
    let mut m = mac(key);
    m.update(data);
    finish(m)
}

/// `H(key, a ‖ b)` without building the concatenation.
pub(crate) fn hmac2(key: &[u8], a: &[u8], b: &[u8]) -> Tag {
    let mut m = mac(key);
    m.update(a);
    m.update(b);
    finish(m)
}

/// `derive(k) = H("macaroons-key-generator", k)`, with the keyed state computed once.
pub(crate) fn derive(key: &[u8]) -> Tag {
    static GEN: OnceLock<HmacSha256> = OnceLock::new();
    let mut m = GEN.get_or_init(|| mac(b"macaroons-key-generator")).clone();
    m.update(key);
    finish(m)
}

/// Third-party step: `H(sig, H(sig, vid) ‖ H(sig, cid))`.
pub(crate) fn chain_third_party(sig: &Tag, vid: &[u8], cid: &[u8]) -> Tag {
    hmac2(sig, &hmac(sig, vid), &hmac(sig, cid))
}

/// Binding of a discharge to a root signature: `H(Z, H(Z, root_sig) ‖ H(Z, d_sig))`.
pub(crate) fn bind(root_sig: &Tag, discharge_sig: &Tag) -> Tag {
    hmac2(&ZERO, &hmac(&ZERO, root_sig), &hmac(&ZERO, discharge_sig))
}

/// Constant-time equality of two tags.
pub(crate) fn tags_equal(a: &Tag, b: &Tag) -> bool {
    a.ct_eq(b).into()
}

/// Seal `derive(caveat_key)` under `sig` with the given nonce: the 72-byte VID.
pub(crate) fn seal_vid(
    sig: &Tag,
    nonce: &[u8; NONCE_LEN],
    derived_caveat_key: &Tag,
) -> Result<[u8; VID_LEN]> {
    let cipher = XSalsa20Poly1305::new(sig.into());
    let sealed = cipher
        .encrypt(nonce.into(), derived_caveat_key.as_slice())
        .map_err(|_| Error::Malformed("could not seal third-party caveat key"))?;
    let mut vid = [0u8; VID_LEN];
    if sealed.len() != VID_LEN - NONCE_LEN {
        return Err(Error::Malformed("sealed caveat key has an unexpected length"));
    }
    vid[..NONCE_LEN].copy_from_slice(nonce);
    vid[NONCE_LEN..].copy_from_slice(&sealed);
    Ok(vid)
}

/// Open a VID with `sig`, giving `derive(caveat_key)`, or the opaque signature error.
pub(crate) fn open_vid(sig: &Tag, vid: &[u8]) -> Result<Zeroizing<Tag>> {
    if vid.len() != VID_LEN {
        return Err(Error::InvalidSignature);
    }
    let cipher = XSalsa20Poly1305::new(sig.into());
    let nonce: &[u8; NONCE_LEN] = vid[..NONCE_LEN].try_into().map_err(|_| Error::InvalidSignature)?;
    let mut plain =
        Zeroizing::new(cipher.decrypt(nonce.into(), &vid[NONCE_LEN..]).map_err(|_| Error::InvalidSignature)?);
    let key: Tag = plain.as_slice().try_into().map_err(|_| Error::InvalidSignature)?;
    plain.zeroize();
    Ok(Zeroizing::new(key))
}

/// Minimum length of any root or caveat key.
pub const MIN_KEY_LEN: usize = 32;

/// A secret key: a service root key, a third-party caveat key, or a per-token key.
///
/// At least 32 bytes. No `Copy`, no equality, `Debug` prints `[redacted]`, zeroized on drop
/// (the cached keyed HMAC state too: hmac/sha2 are built with their `zeroize` feature).
#[derive(Clone)]
pub struct RootKey {
    bytes: Box<[u8]>,
    /// HMAC state keyed with `bytes`, computed on first use: every per-token key and envelope key
    /// of a root key then costs two SHA-256 compressions instead of four.
    keyed: OnceLock<HmacSha256>,
}

impl Drop for RootKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for RootKey {}

impl RootKey {
    /// Wrap secret bytes; refuses keys shorter than 32 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(Error::KeyTooShort(bytes.len()));
        }
        Ok(RootKey { bytes: bytes.into(), keyed: OnceLock::new() })
    }

    /// A fresh random 32-byte key from the operating system.
    pub fn generate() -> Result<Self> {
        let bytes = Zeroizing::new(random::<32>()?);
        Self::new(bytes.as_slice())
    }

    /// The secret bytes (for sealing them at rest; never log them).
    pub fn expose_secret(&self) -> &[u8] {
        &self.bytes
    }

    fn keyed(&self) -> HmacSha256 {
        self.keyed.get_or_init(|| mac(&self.bytes)).clone()
    }

    /// The per-token root key `H(secret, "tessera/token/v1" ‖ tid)`.
    pub fn token_key(&self, tid: &TokenId) -> TokenKey {
        let mut m = self.keyed();
        m.update(b"tessera/token/v1");
        m.update(tid.as_bytes());
        TokenKey(Zeroizing::new(finish(m)))
    }

    /// The per-kid JWT envelope key `H(secret, "tessera/jwt/v1")`.
    pub fn envelope_key(&self) -> EnvelopeKey {
        let mut m = self.keyed();
        m.update(b"tessera/jwt/v1");
        EnvelopeKey::from_tag(finish(m))
    }

    pub(crate) fn derived(&self) -> Zeroizing<Tag> {
        Zeroizing::new(derive(&self.bytes))
    }
}

/// The per-token root key of one token family (`RootKey::token_key`): 32 bytes, redacted in
/// `Debug`, zeroized on drop. Handing it out lets a holder verify (and mint) that family only.
#[derive(Clone)]
pub struct TokenKey(Zeroizing<Tag>);

impl TokenKey {
    /// The key bytes (for a standard macaroon library, which verifies with this as root key).
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// As a [`RootKey`], e.g. to verify with [`crate::Verifier::verify_with_key`].
    pub fn to_root_key(&self) -> RootKey {
        RootKey { bytes: self.0.as_slice().into(), keyed: OnceLock::new() }
    }

    pub(crate) fn derived(&self) -> Zeroizing<Tag> {
        Zeroizing::new(derive(self.0.as_slice()))
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey([redacted])")
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey([redacted])")
    }
}

/// HMAC-SHA256 for the JWT envelope (HS256), with constant-time verification.
pub(crate) fn hs256_sign(key: &[u8], data: &[u8]) -> Tag {
    hmac(key, data)
}

/// Verify an HS256 tag in constant time.
pub(crate) fn hs256_verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    let mut m = mac(key);
    m.update(data);
    m.verify_slice(tag).is_ok()
}

/// The per-kid HS256 key. Debug prints `[redacted]`; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EnvelopeKey(Tag);

impl EnvelopeKey {
    pub(crate) fn from_tag(tag: Tag) -> Self {
        EnvelopeKey(tag)
    }

    /// Wrap key bytes received out of band (e.g. from the service's envelope-key endpoint).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EnvelopeKey(bytes)
    }

    /// The key bytes, for handing to a JWT library in tests or a JWT-only service.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for EnvelopeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvelopeKey([redacted])")
    }
}
