//! A token's layout: its canonical V2 buffer and where each field lives in it. Below both
//! `format` (which decodes and builds the buffer) and `token` (what a token does).

use std::ops::Range;

use crate::error::{Error, Result};
use crate::limits::MAX_FIELD;

/// Where a field lives inside the token buffer.
pub(crate) type Span = Range<u32>;

/// A caveat's fields, as positions in the token buffer.
#[derive(Clone, Debug)]
pub(crate) enum CaveatSpan {
    First(Span),
    Third { location: Option<Span>, id: Span, vid: Span },
}

/// A caveat of a token, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caveat<'a> {
    /// A predicate the verifier checks itself (see the caveat language in `docs/FORMAT.md`).
    FirstParty(&'a [u8]),
    /// A condition another service must vouch for with a discharge token.
    ThirdParty {
        /// Where to ask for the discharge (not signed: never authorize on it).
        location: &'a str,
        /// The caveat id (a ticket the third party understands).
        id: &'a [u8],
        /// The verification id: the caveat key sealed under the chain signature (72 bytes).
        vid: &'a [u8],
    },
}

/// A macaroon: location, identifier, caveats and a 32-byte signature. Unverified.
///
/// `Debug` never shows the signature: with it, the token text is a bearer credential.
#[derive(Clone)]
pub struct Token {
    /// Canonical V2 binary encoding; the last 32 bytes are the signature.
    pub(crate) buf: Vec<u8>,
    pub(crate) location: Option<Span>,
    pub(crate) identifier: Span,
    pub(crate) caveats: Vec<CaveatSpan>,
}

impl Drop for Token {
    /// The buffer holds the signature, so the whole token is a bearer credential: wiped when it
    /// goes (every copy: the memo's entries and the threads' fronts keep their own).
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

/// Bytes after the last caveat: end of caveats, signature field head, signature.
pub(crate) const TRAILER_LEN: usize = 3 + 32;

pub(crate) fn check_field(what: &'static str, bytes: &[u8]) -> Result<()> {
    if bytes.len() > MAX_FIELD {
        return Err(Error::TooLarge { what, size: bytes.len(), limit: MAX_FIELD });
    }
    Ok(())
}
