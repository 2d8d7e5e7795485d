//! Documented size limits, enforced before any cryptography (see `docs/FORMAT.md`).

/// Maximum length of token text (base64 or JSON), in bytes.
pub const MAX_TOKEN_TEXT: usize = 16 * 1024;
/// Maximum number of caveats in one token.
pub const MAX_CAVEATS: usize = 64;
/// Maximum length of one field (location, identifier, caveat id), in bytes.
pub const MAX_FIELD: usize = 4 * 1024;
/// Maximum nesting depth of discharges (a discharge of a discharge ... of the root).
pub const MAX_DISCHARGE_DEPTH: usize = 4;
/// Maximum number of discharges presented with one request.
pub const MAX_DISCHARGES: usize = 64;
/// Maximum length of a JWT envelope, in bytes.
pub const MAX_ENVELOPE_TEXT: usize = 16 * 1024;
/// Maximum length of a token in binary form (what [`MAX_TOKEN_TEXT`] of base64 decodes to).
pub const MAX_BINARY: usize = MAX_TOKEN_TEXT / 4 * 3;
