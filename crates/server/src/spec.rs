//! What a request may ask of a new credential, checked the same way by every route that issues
//! one (tokens, sessions, links, login exchange): its subject, lifetime, restriction caveats and
//! claims.

use tessera_core::CustomClaims;

use crate::http::problem::ApiError;
use crate::http::text::words;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Subjects of application credentials start with this.
pub(crate) const APP_SUBJECT_PREFIX: &str = "app:";

/// The subject the audit trail names as the actor of housekeeping and of the CLI's local admin:
/// no credential is issued for it, so no caller can pass for the service in the trail.
pub(crate) const SYSTEM_SUBJECT: &str = "system";

/// Subject names: 1 to 256 bytes without control characters, not reserved (`app:...`,
/// [`SYSTEM_SUBJECT`]).
pub(crate) fn check_subject(subject: Option<&str>) -> Result<()> {
    match subject {
        Some(s) if s.is_empty() || s.len() > tessera_core::MAX_SUBJECT || s.chars().any(char::is_control) => {
            Err(ApiError::bad_request("subject must be 1 to 256 bytes without control characters"))
        }
        Some(s) if s.starts_with(APP_SUBJECT_PREFIX) => Err(ApiError::bad_request(
            "subjects starting with app: are application credentials: register an application (POST /v1/apps)",
        )),
        Some(SYSTEM_SUBJECT) => Err(ApiError::bad_request(
            "the subject \"system\" is reserved: the audit trail names the service itself with it",
        )),
        _ => Ok(()),
    }
}

/// A lifetime like `30m`: `default` when absent; positive and at most `max`.
pub(crate) fn lifetime(
    what: &str,
    asked: Option<&str>,
    default: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration> {
    let ttl = match asked {
        None => default,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("{what} \"{t:.40}\": {e} (use e.g. 30m, 6h, 7d)")))?,
    };
    if ttl > max || ttl.is_zero() {
        return Err(ApiError::bad_request(format!(
            "{what} must be positive and at most {}",
            humantime::format_duration(max)
        )));
    }
    Ok(ttl)
}

/// The caveats of requested `operations`, `resources` and `client_ips`, checked.
pub(crate) fn restriction_caveats(
    operations: &Option<Vec<String>>,
    resources: &Option<Vec<String>>,
    client_ips: &Option<Vec<String>>,
) -> Result<Vec<String>> {
    let mut caveats = Vec::new();
    for (what, name, items) in [
        ("operations", "allow", operations),
        ("resources", "resource", resources),
        ("client_ips", "client-ip", client_ips),
    ] {
        if let Some(items) = items {
            let c = format!("{name} {}", words(what, items)?);
            tessera_core::Predicate::validate(c.as_bytes())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            caveats.push(c);
        }
    }
    Ok(caveats)
}

/// The claims of a new token. Claims are the issuer's word about the subject: a subject cannot
/// vouch for itself. A child keeps the claims of its parent (the handler passes them only for
/// the parent's own subject); only the admin sets new ones.
pub(crate) fn claims_for(
    asked: Option<serde_json::Map<String, serde_json::Value>>,
    inherited: Option<CustomClaims>,
    may_set_claims: bool,
) -> Result<Option<CustomClaims>> {
    match asked {
        None => Ok(inherited),
        Some(_) if !may_set_claims => Err(ApiError::forbidden(
            "only the admin subject sets custom claims; a token you mint for yourself carries the claims \
             of your own token",
        )),
        Some(asked) => {
            let mut all = inherited.map(|c| c.as_map().clone()).unwrap_or_default();
            all.extend(asked);
            Ok(Some(CustomClaims::new(all).map_err(|e| ApiError::bad_request(e.to_string()))?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Review (low): `system` is the trail's actor for the service itself; no credential names it.
    #[test]
    fn the_system_subject_is_reserved_like_app_subjects() {
        assert!(check_subject(Some("system")).is_err());
        assert!(check_subject(Some("app:billing")).is_err());
        assert!(check_subject(Some("systems")).is_ok());
        assert!(check_subject(Some("alice")).is_ok());
    }
}
