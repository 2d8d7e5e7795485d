//! Tessera core: macaroon capability tokens in the libmacaroons V2 format.
//!
//! - [`Token`]: mint, attenuate (offline, no key), add third-party caveats, discharge and bind;
//!   read and write V2 binary (canonical, base64url), V2 JSON, and read V1.
//! - [`Predicate`]: the first-party caveat language (`time-before`, `time-after`, `allow`,
//!   `resource`, `client-ip`); unknown caveats fail closed.
//! - [`Verifier`]: checks a token and its discharges against a request [`Context`], returning
//!   [`Verified`] with the effective [`Restrictions`]; with a [`SignatureMemo`], a token text
//!   presented again skips its signature chain (its caveats are still checked).
//! - [`CustomClaims`]: data the issuer binds into a token's identifier.
//! - [`envelope`]: JWT envelopes (HS256, ES256, EdDSA) of a verified token.
//!
//! This crate does no I/O: keys come through the [`KeyProvider`] trait.
//!
//! ```
//! use tessera_core::{Context, RootKey, Token, Verifier};
//!
//! // A plain macaroon with an application identifier, verified with its root key.
//! let key = RootKey::new(&[7u8; 32])?;
//! let token = Token::mint(None, &key, b"order-7")?.attenuate("allow read")?;
//! let text = token.encode();
//! let parsed = Token::decode(&text)?;
//! let ctx = Context::now().operation("read");
//! Verifier::new().verify_with_key(&parsed, &key, &[], &ctx)?;
//! # Ok::<(), tessera_core::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod args;
pub mod caveat;
mod claims;
mod crypto;
pub mod envelope;
mod error;
mod format;
mod id;
mod layout;
pub mod limits;
mod memo;
mod random;
mod restrictions;
mod token;
mod verify;

pub use caveat::{Context, Predicate, RateLimit, Restrictions};
pub use claims::{CustomClaims, MAX_CLAIMS, REGISTERED_CLAIMS};
pub use crypto::{RootKey, TokenKey, MIN_KEY_LEN, VID_LEN};
pub use error::{Error, Result};
pub use id::{Identifier, KeyId, SessionId, TokenId, MAX_SUBJECT};
pub use memo::{new_key_generation, SignatureMemo, VerifiedText, MEMO_FRONT, MEMO_MAX_TEXT};
pub use token::{Caveat, Token};
pub use verify::{ChainKeyCache, KeyProvider, StaticKeys, Verified, Verifier};

/// Footguns for tests and vector generation. Do not use in production code.
pub mod dangerous {
    use crate::{Result, RootKey, Token};

    /// Add a third-party caveat with a caller-chosen nonce (reproducible bytes for test vectors).
    /// Reusing a nonce under the same chain key breaks the cipher's guarantees.
    pub fn add_third_party_caveat_with_nonce(
        token: &Token,
        location: &str,
        caveat_key: &RootKey,
        caveat_id: &[u8],
        nonce: &[u8; 24],
    ) -> Result<Token> {
        token.add_third_party_caveat_with_nonce(location, caveat_key, caveat_id, nonce)
    }
}
