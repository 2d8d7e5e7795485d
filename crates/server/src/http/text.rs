//! Text helpers every route shares: RFC 3339 times, token texts, caveat words, base64url.

use base64::Engine as _;
use tessera_core::Token;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::http::problem::ApiError;

type Result<T, E = ApiError> = std::result::Result<T, E>;

pub(crate) fn rfc3339(t: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(t).ok().and_then(|t| t.format(&Rfc3339).ok())
}

pub(crate) fn parse_time(s: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| ApiError::bad_request(format!("\"{s}\" is not an RFC 3339 time")))
}
pub(crate) fn decode_token(text: &str) -> Result<Token> {
    Token::decode(text).map_err(ApiError::from)
}

pub(crate) fn decode_all(texts: &[String]) -> Result<Vec<Token>> {
    if texts.len() > tessera_core::limits::MAX_DISCHARGES {
        return Err(ApiError::too_large(format!(
            "at most {} discharges",
            tessera_core::limits::MAX_DISCHARGES
        )));
    }
    texts.iter().map(|t| decode_token(t)).collect()
}

/// One word per argument: caveat arguments are separated by single spaces.
pub(crate) fn words(what: &str, items: &[String]) -> Result<String> {
    if items.is_empty() {
        return Err(ApiError::bad_request(format!("{what} must not be empty (omit it for no restriction)")));
    }
    if let Some(bad) = items.iter().find(|i| i.is_empty() || i.chars().any(char::is_whitespace)) {
        return Err(ApiError::bad_request(format!("{what} entry \"{bad}\" must be one non-empty word")));
    }
    Ok(items.join(" "))
}
/// Base64url text (padding allowed), decoded.
pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let t = text.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).ok()
}
