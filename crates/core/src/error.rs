//! The one error type of `tessera-core`.

use crate::id::KeyId;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when parsing, building or verifying a token or envelope.
///
/// A bad signature anywhere in a token or its discharges is reported as the single opaque
/// [`Error::InvalidSignature`]: it never says where the chain broke. An unmet caveat names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token text or bytes do not follow any accepted wire format.
    #[error("malformed token: {0}")]
    Malformed(&'static str),

    /// An input is larger than a documented limit (see `docs/FORMAT.md`).
    #[error("{what} is too large: {size} > limit {limit}")]
    TooLarge {
        /// What was measured.
        what: &'static str,
        /// Its size (bytes or count).
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The signature chain of the token or one of its discharges does not verify.
    #[error("token signature is invalid")]
    InvalidSignature,

    /// The identifier is not a Tessera identifier, so no root key can be chosen for it.
    #[error("identifier is not a Tessera identifier; supply the root key to verify a foreign token")]
    ForeignIdentifier,

    /// No usable root key is known for this key id (unknown or revoked key).
    #[error("no usable root key for key id {0}")]
    UnknownKey(KeyId),

    /// The token (or a token it was attenuated from) has been revoked.
    #[error("token has been revoked")]
    Revoked,

    /// A root key or caveat key is shorter than 32 bytes.
    #[error("key is too short: {0} bytes, at least 32 are required")]
    KeyTooShort(usize),

    /// A first-party caveat does not hold for the request.
    #[error("caveat \"{caveat}\" not met: {reason}")]
    CaveatNotMet {
        /// The caveat text as it appears in the token.
        caveat: String,
        /// Why it does not hold.
        reason: String,
    },

    /// A caveat uses a predicate the verifier does not know (fails closed).
    #[error("unknown caveat \"{0}\": register a checker for it or remove it")]
    UnknownCaveat(String),

    /// A caveat uses a known predicate with an argument that does not parse.
    #[error("malformed caveat \"{caveat}\": {reason}")]
    MalformedCaveat {
        /// The caveat text (lossy UTF-8).
        caveat: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A third-party caveat has no matching discharge among those supplied.
    #[error("missing discharge for third-party caveat at \"{location}\"")]
    MissingDischarge {
        /// The location of the third-party caveat (unauthenticated, informational only).
        location: String,
    },

    /// A supplied discharge was not needed by any third-party caveat (or was supplied twice).
    #[error("{0} discharge(s) supplied but not used by any third-party caveat")]
    UnusedDischarge(usize),

    /// Discharges nest deeper than the limit.
    #[error("discharges nest deeper than {0} levels")]
    DischargeTooDeep(usize),

    /// A JWT envelope is malformed, uses a forbidden algorithm, or its claims do not hold.
    #[error("invalid envelope: {0}")]
    Envelope(String),

    /// Custom claims are not a JSON object, or use a registered claim name.
    #[error("custom claims: {0}")]
    Claims(String),

    /// The operating system random number generator failed.
    #[error("random number generator failed")]
    Random,
}
