//! Custom claims: data the issuer binds into a token (a user id, roles, an object's owner), so
//! that a service reading the token needs no lookup.
//!
//! Claims live in the token's identifier, which the signature chain starts from: no holder can
//! change or drop them, and every attenuation keeps them. They are a JSON object of at most
//! [`MAX_CLAIMS`] bytes (compact encoding) whose names are not registered claims
//! ([`REGISTERED_CLAIMS`]), so that copying them into a JWT envelope never overrides `sub`, `exp`
//! or `cap`.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Maximum size of the custom claims, compact JSON, in bytes.
pub const MAX_CLAIMS: usize = 2 * 1024;

/// Claim names a custom claim may not use: RFC 7519's registered claims, the envelope's `cap`,
/// and `sid` (the session id of access tokens).
pub const REGISTERED_CLAIMS: [&str; 9] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "cap", "sid"];

/// A checked set of custom claims: a JSON object, at most [`MAX_CLAIMS`] bytes, no registered
/// names. Held with its canonical compact encoding (names sorted), which is what the identifier
/// carries.
///
/// ```
/// use tessera_core::CustomClaims;
///
/// let claims = CustomClaims::from_json(r#"{"roles":["editor"],"org":7}"#)?;
/// assert_eq!(claims.get("org"), Some(&serde_json::json!(7)));
/// assert!(CustomClaims::from_json(r#"{"sub":"mallory"}"#).is_err());
/// # Ok::<(), tessera_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CustomClaims {
    map: Map<String, Value>,
    json: String,
}

impl CustomClaims {
    /// Check a JSON object and take it.
    pub fn new(map: Map<String, Value>) -> Result<Self> {
        if let Some(name) = map.keys().find(|k| REGISTERED_CLAIMS.contains(&k.as_str())) {
            return Err(Error::Claims(format!(
                "\"{name}\" is a registered claim the service sets itself; choose another name \
                 (reserved: {})",
                REGISTERED_CLAIMS.join(", ")
            )));
        }
        // A map of JSON values always serializes.
        let json = serde_json::to_string(&map).map_err(|e| Error::Claims(e.to_string()))?;
        if json.len() > MAX_CLAIMS {
            return Err(Error::TooLarge { what: "custom claims", size: json.len(), limit: MAX_CLAIMS });
        }
        Ok(CustomClaims { map, json })
    }

    /// Parse and check JSON text (an object).
    pub fn from_json(text: &str) -> Result<Self> {
        if text.len() > 4 * MAX_CLAIMS {
            return Err(Error::TooLarge { what: "custom claims", size: text.len(), limit: MAX_CLAIMS });
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Self::new(map),
            Ok(_) => Err(Error::Claims("must be a JSON object".into())),
            Err(e) => Err(Error::Claims(format!("not valid JSON: {e}"))),
        }
    }

    /// The claims as a JSON object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// One claim.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name)
    }

    /// The canonical compact JSON (names sorted).
    pub fn to_json(&self) -> &str {
        &self.json
    }

    /// Whether there are no claims.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl fmt::Debug for CustomClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomClaims({})", self.json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_json_kind_is_accepted_and_encoded_canonically() {
        let c = CustomClaims::from_json(
            r#"{ "z": null, "roles": ["a", "b"], "n": -1.5, "ok": true, "nested": {"owner": "alice"} }"#,
        )
        .unwrap();
        assert_eq!(
            c.to_json(),
            r#"{"n":-1.5,"nested":{"owner":"alice"},"ok":true,"roles":["a","b"],"z":null}"#
        );
        assert_eq!(CustomClaims::from_json(c.to_json()).unwrap(), c);
    }

    #[test]
    fn registered_names_non_objects_and_oversize_are_refused() {
        for name in REGISTERED_CLAIMS {
            let e = CustomClaims::from_json(&format!(r#"{{"{name}":1}}"#)).unwrap_err();
            assert!(e.to_string().contains("registered claim"), "{name}: {e}");
        }
        for text in ["[1]", "\"x\"", "7", "null", "{", ""] {
            assert!(matches!(CustomClaims::from_json(text), Err(Error::Claims(_))), "{text}");
        }
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_CLAIMS));
        assert!(matches!(CustomClaims::from_json(&big), Err(Error::TooLarge { .. })));
        let fits = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_CLAIMS - 8));
        assert_eq!(CustomClaims::from_json(&fits).unwrap().to_json().len(), MAX_CLAIMS);
    }
}
