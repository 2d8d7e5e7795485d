//! The token model: an unverified macaroon held in its canonical V2 binary form.
//!
//! A [`Token`] is what came over the wire or was just built: it can be inspected, attenuated,
//! serialized and verified, but it grants nothing. Only [`crate::Verifier::verify`] turns it into a
//! [`crate::Verified`], so an unverified token cannot be mistaken for a verified one.

use std::fmt;

use crate::crypto::{self, RootKey, Tag, VID_LEN};
use crate::error::{Error, Result};
use crate::format;
use crate::id::Identifier;
use crate::layout::check_field;
pub use crate::layout::{Caveat, Token};
use crate::layout::{CaveatSpan, Span, TRAILER_LEN};
use crate::limits::MAX_CAVEATS;

impl Token {
    /// Mint a plain macaroon: `sig = H(derive(root_key), identifier)`.
    ///
    /// Use this for foreign or application-defined identifiers; [`Token::mint_tessera`] for the
    /// Tessera identifier with a per-token key.
    pub fn mint(location: Option<&str>, root_key: &RootKey, identifier: &[u8]) -> Result<Token> {
        let sig = crypto::hmac(&*root_key.derived(), identifier);
        format::build(location, identifier, &[], &sig)
    }

    /// Mint a Tessera token: the identifier carries kid, tid and subject, and the root key of the
    /// chain is the per-token key `H(secret, "tessera/token/v1" ‖ tid)`.
    pub fn mint_tessera(location: Option<&str>, secret: &RootKey, id: &Identifier) -> Result<Token> {
        let identifier = id.encode();
        let sig = crypto::hmac(&*secret.token_key(&id.tid).derived(), &identifier);
        format::build(location, &identifier, &[], &sig)
    }

    /// Parse token text: V2 binary in base64 (either alphabet, padded or not), V2 JSON, or V1.
    pub fn decode(text: &str) -> Result<Token> {
        format::decode_text(text)
    }

    /// Parse raw V2 (or V1) binary bytes.
    pub fn from_binary(bytes: &[u8]) -> Result<Token> {
        format::decode_binary(bytes.to_vec())
    }

    /// Canonical text form: V2 binary, base64url without padding.
    pub fn encode(&self) -> String {
        format::encode_base64(&self.buf)
    }

    /// The V2 binary bytes.
    pub fn to_binary(&self) -> &[u8] {
        &self.buf
    }

    /// The V2 JSON form (`{"v":2,"l":..,"i"|"i64":..,"c":[..],"s64":..}`).
    pub fn to_json(&self) -> String {
        format::encode_json(self)
    }

    /// The location hint (not signed).
    pub fn location(&self) -> Option<&str> {
        // Locations are checked to be UTF-8 when a token is built or parsed.
        self.location.as_ref().and_then(|s| std::str::from_utf8(self.span(s)).ok())
    }

    /// The identifier bytes.
    pub fn identifier(&self) -> &[u8] {
        self.span(&self.identifier)
    }

    /// The Tessera identifier, if the identifier is one.
    pub fn tessera_identifier(&self) -> Option<Identifier> {
        Identifier::decode(self.identifier())
    }

    /// The caveats, in order.
    pub fn caveats(&self) -> impl ExactSizeIterator<Item = Caveat<'_>> + '_ {
        self.caveats.iter().map(|c| self.caveat(c))
    }

    /// Number of caveats.
    pub fn caveat_count(&self) -> usize {
        self.caveats.len()
    }

    /// The signature. Whoever holds it can attenuate and present the token: treat it as secret.
    pub fn signature(&self) -> &[u8; 32] {
        self.sig()
    }

    pub(crate) fn sig(&self) -> &Tag {
        let at = self.buf.len() - 32;
        // The buffer always ends with a 32-byte signature (checked at parse and build).
        self.buf[at..].try_into().unwrap_or(&[0u8; 32])
    }

    pub(crate) fn span(&self, s: &Span) -> &[u8] {
        &self.buf[s.start as usize..s.end as usize]
    }

    pub(crate) fn caveat(&self, c: &CaveatSpan) -> Caveat<'_> {
        match c {
            CaveatSpan::First(id) => Caveat::FirstParty(self.span(id)),
            CaveatSpan::Third { location, id, vid } => Caveat::ThirdParty {
                location: location
                    .as_ref()
                    .and_then(|l| std::str::from_utf8(self.span(l)).ok())
                    .unwrap_or(""),
                id: self.span(id),
                vid: self.span(vid),
            },
        }
    }

    /// Add a first-party caveat, returning the narrower token. Needs no key.
    ///
    /// Built-in predicates (`time-before`, `allow`, ...) must be well-formed; other predicates are
    /// accepted as application-defined (a verifier without a checker for them fails closed).
    pub fn attenuate(&self, caveat: &str) -> Result<Token> {
        crate::caveat::validate(caveat.as_bytes())?;
        self.attenuate_raw(caveat.as_bytes())
    }

    /// Add a first-party caveat of arbitrary bytes without checking it against the caveat language.
    pub fn attenuate_raw(&self, caveat_id: &[u8]) -> Result<Token> {
        check_field("caveat", caveat_id)?;
        self.check_room()?;
        let sig = crypto::hmac(self.sig(), caveat_id);
        let mut out = self.truncated_clone(caveat_id.len() + 8);
        let id = format::push_field(&mut out.buf, format::FIELD_IDENTIFIER, caveat_id);
        out.buf.push(format::EOS);
        out.caveats.push(CaveatSpan::First(id));
        format::push_trailer(&mut out.buf, &sig);
        Ok(out)
    }

    /// Add a third-party caveat with a fresh random nonce. The third party at `location` must
    /// know `caveat_key` (or be able to recover it from `caveat_id`) to issue the discharge.
    pub fn add_third_party_caveat(
        &self,
        location: &str,
        caveat_key: &RootKey,
        caveat_id: &[u8],
    ) -> Result<Token> {
        let nonce = crate::random::random::<24>()?;
        self.add_third_party_caveat_with_nonce(location, caveat_key, caveat_id, &nonce)
    }

    pub(crate) fn add_third_party_caveat_with_nonce(
        &self,
        location: &str,
        caveat_key: &RootKey,
        caveat_id: &[u8],
        nonce: &[u8; 24],
    ) -> Result<Token> {
        check_field("caveat", caveat_id)?;
        check_field("location", location.as_bytes())?;
        self.check_room()?;
        let old = *self.sig();
        let vid = crypto::seal_vid(&old, nonce, &caveat_key.derived())?;
        let sig = crypto::chain_third_party(&old, &vid, caveat_id);
        let mut out = self.truncated_clone(location.len() + caveat_id.len() + VID_LEN + 12);
        let loc = if location.is_empty() {
            None
        } else {
            Some(format::push_field(&mut out.buf, format::FIELD_LOCATION, location.as_bytes()))
        };
        let id = format::push_field(&mut out.buf, format::FIELD_IDENTIFIER, caveat_id);
        let vid = format::push_field(&mut out.buf, format::FIELD_VID, &vid);
        out.buf.push(format::EOS);
        out.caveats.push(CaveatSpan::Third { location: loc, id, vid });
        format::push_trailer(&mut out.buf, &sig);
        Ok(out)
    }

    /// Mint a discharge for a third-party caveat: `sig = H(derive(caveat_key), caveat_id)`.
    /// Add first-party caveats to it (for example a short `time-before`), then [`Token::bind`].
    pub fn discharge(location: Option<&str>, caveat_key: &RootKey, caveat_id: &[u8]) -> Result<Token> {
        Token::mint(location, caveat_key, caveat_id)
    }

    /// Bind a discharge to this (root) token for a request:
    /// `H(Z, H(Z, root_sig) ‖ H(Z, discharge_sig))`. Attenuating the root afterwards invalidates
    /// the binding; bind again.
    pub fn bind(&self, discharge: &Token) -> Token {
        let sig = crypto::bind(self.sig(), discharge.sig());
        let mut out = discharge.clone();
        let at = out.buf.len() - 32;
        out.buf[at..].copy_from_slice(&sig);
        out
    }

    fn check_room(&self) -> Result<()> {
        if self.caveats.len() >= MAX_CAVEATS {
            return Err(Error::TooLarge {
                what: "caveat count",
                size: self.caveats.len() + 1,
                limit: MAX_CAVEATS,
            });
        }
        Ok(())
    }

    /// A copy without the trailer, ready for one more caveat.
    fn truncated_clone(&self, extra: usize) -> Token {
        let keep = self.buf.len() - TRAILER_LEN;
        let mut buf = Vec::with_capacity(keep + extra + TRAILER_LEN);
        buf.extend_from_slice(&self.buf[..keep]);
        Token {
            buf,
            location: self.location.clone(),
            identifier: self.identifier.clone(),
            caveats: self.caveats.clone(),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caveats: Vec<String> = self
            .caveats()
            .map(|c| match c {
                Caveat::FirstParty(id) => String::from_utf8_lossy(id).into_owned(),
                Caveat::ThirdParty { location, .. } => format!("third-party@{location}"),
            })
            .collect();
        f.debug_struct("Token")
            .field("location", &self.location())
            .field("identifier", &String::from_utf8_lossy(self.identifier()))
            .field("caveats", &caveats)
            .field("signature", &"[redacted]")
            .finish()
    }
}
