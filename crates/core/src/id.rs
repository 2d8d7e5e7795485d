//! Key ids, token ids and the Tessera identifier carried in every token.
//!
//! The identifier is a CBOR array `[1, h'kid'(8), h'tid'(16), "sub"]`, or
//! `[1, h'kid'(8), h'tid'(16), "sub", "claims"]` for a token with custom claims (their compact
//! JSON as a text string; see [`CustomClaims`]). Because CBOR heads are minimal and the first
//! three items have fixed sizes, the kid and tid sit at fixed offsets and are read without a
//! general CBOR decoder; any CBOR tool still reads the whole identifier.

use std::fmt;

use crate::claims::{CustomClaims, MAX_CLAIMS};
use crate::error::{Error, Result};

const KID_LEN: usize = 8;
const TID_LEN: usize = 16;
/// Maximum subject length in bytes.
pub const MAX_SUBJECT: usize = 256;

fn hex_fmt(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 2 * TID_LEN];
    let out = &mut buf[..2 * bytes.len()];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
    // Only ASCII hex digits were written.
    f.write_str(std::str::from_utf8(out).unwrap_or_default())
}

pub(crate) fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

macro_rules! id_type {
    ($name:ident, $len:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Wrap raw bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
            /// A fresh random id.
            pub fn generate() -> Result<Self> {
                crate::random::random::<$len>().map(Self)
            }
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
            /// Parse the lowercase or uppercase hex form.
            pub fn from_hex(s: &str) -> Option<Self> {
                parse_hex::<$len>(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                hex_fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::from_hex(s).ok_or(Error::Malformed(concat!(
                    stringify!($name),
                    " must be ",
                    stringify!($len),
                    " bytes of hex"
                )))
            }
        }
    };
}

id_type!(KeyId, KID_LEN, "Names a root key (8 bytes, shown as 16 hex digits).");
id_type!(
    TokenId,
    TID_LEN,
    "Names a minted token and all its attenuations (16 random bytes, shown as 32 hex digits)."
);
id_type!(
    SessionId,
    TID_LEN,
    "Names a session: its access tokens' `sid` and the chain of its refresh tokens (16 random bytes, shown as 32 hex digits)."
);

/// The decoded Tessera identifier: which key, which token family, on whose behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identifier {
    /// The root key that signs the token.
    pub kid: KeyId,
    /// The token family.
    pub tid: TokenId,
    /// The user or service the token speaks for.
    pub sub: String,
    /// Custom claims the issuer bound into the token, if any.
    pub claims: Option<CustomClaims>,
}

// CBOR heads: array(4) or array(5) (with claims), unsigned(1), bytes(8), bytes(16).
const PREFIX_ARRAY: u8 = 0x84;
const PREFIX_ARRAY_CLAIMS: u8 = 0x85;
const VERSION: u8 = 0x01;
const HEAD_KID: u8 = 0x40 | KID_LEN as u8;
const HEAD_TID: u8 = 0x40 | TID_LEN as u8;
const SUB_AT: usize = 3 + KID_LEN + 1 + TID_LEN;

impl Identifier {
    /// Build an identifier, checking the subject length.
    pub fn new(kid: KeyId, tid: TokenId, sub: impl Into<String>) -> Result<Self> {
        let sub = sub.into();
        if sub.len() > MAX_SUBJECT {
            return Err(Error::TooLarge { what: "subject", size: sub.len(), limit: MAX_SUBJECT });
        }
        Ok(Identifier { kid, tid, sub, claims: None })
    }

    /// Bind custom claims (none when `claims` is empty: the identifier stays a 4-item array).
    pub fn with_claims(mut self, claims: CustomClaims) -> Self {
        self.claims = (!claims.is_empty()).then_some(claims);
        self
    }

    /// Encode as CBOR `[1, kid, tid, sub]`, or `[1, kid, tid, sub, claims]`.
    pub fn encode(&self) -> Vec<u8> {
        use ciborium::value::Value;
        let mut items = vec![
            Value::Integer(1.into()),
            Value::Bytes(self.kid.as_bytes().to_vec()),
            Value::Bytes(self.tid.as_bytes().to_vec()),
            Value::Text(self.sub.clone()),
        ];
        if let Some(c) = &self.claims {
            items.push(Value::Text(c.to_json().to_owned()));
        }
        let value = Value::Array(items);
        let extra = self.claims.as_ref().map_or(0, |c| c.to_json().len() + 3);
        let mut out = Vec::with_capacity(SUB_AT + 2 + self.sub.len() + extra);
        // Writing CBOR into a Vec cannot fail.
        if ciborium::into_writer(&value, &mut out).is_err() {
            out.clear();
        }
        out
    }

    /// Decode only the fixed-offset kid and tid (the hot path of verification).
    /// Returns `None` when the bytes are not a Tessera identifier.
    pub fn peek(bytes: &[u8]) -> Option<(KeyId, TokenId)> {
        if bytes.len() < SUB_AT + 1
            || (bytes[0] != PREFIX_ARRAY && bytes[0] != PREFIX_ARRAY_CLAIMS)
            || bytes[1] != VERSION
            || bytes[2] != HEAD_KID
            || bytes[3 + KID_LEN] != HEAD_TID
        {
            return None;
        }
        let kid: [u8; KID_LEN] = bytes[3..3 + KID_LEN].try_into().ok()?;
        let tid: [u8; TID_LEN] = bytes[4 + KID_LEN..SUB_AT].try_into().ok()?;
        Some((KeyId(kid), TokenId(tid)))
    }

    /// Decode a whole identifier; `None` when the bytes are not a Tessera identifier.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (kid, tid) = Self::peek(bytes)?;
        let (sub, rest) = split_text(&bytes[SUB_AT..])?;
        if sub.len() > MAX_SUBJECT {
            return None;
        }
        let claims = if bytes[0] == PREFIX_ARRAY_CLAIMS {
            let (json, rest) = split_text(rest)?;
            if !rest.is_empty() || json.len() > MAX_CLAIMS {
                return None;
            }
            // Checked again: an identifier with claims that break the rules is not ours.
            Some(CustomClaims::from_json(json).ok().filter(|c| !c.is_empty())?)
        } else if rest.is_empty() {
            None
        } else {
            return None;
        };
        Some(Identifier { kid, tid, sub: sub.to_owned(), claims })
    }
}

/// A minimal-head CBOR text string at the start of `bytes`, and what follows it.
fn split_text(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (&head, rest) = bytes.split_first()?;
    if head >> 5 != 3 {
        return None;
    }
    let (len, rest) = match head & 0x1f {
        n @ 0..=23 => (n as usize, rest),
        24 => {
            let (&n, rest) = rest.split_first()?;
            if n < 24 {
                return None;
            }
            (n as usize, rest)
        }
        25 => {
            let n = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            if n < 256 {
                return None;
            }
            (n, &rest[2..])
        }
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    let (text, rest) = rest.split_at(len);
    Some((std::str::from_utf8(text).ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sub: &str) -> Identifier {
        Identifier::new(KeyId([1; 8]), TokenId([2; 16]), sub).unwrap()
    }

    #[test]
    fn round_trip_and_ciborium_agrees() {
        for sub in ["", "alice", &"x".repeat(23), &"y".repeat(24), &"z".repeat(256)] {
            let id = sample(sub);
            let bytes = id.encode();
            assert_eq!(Identifier::decode(&bytes), Some(id.clone()), "sub len {}", sub.len());
            let v: ciborium::value::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
            let arr = v.as_array().unwrap();
            assert_eq!(arr.len(), 4);
            assert_eq!(arr[3].as_text(), Some(sub));
        }
    }

    #[test]
    fn foreign_and_damaged_identifiers_are_not_ours() {
        assert_eq!(Identifier::decode(b"demo-0001"), None);
        let mut bytes = sample("alice").encode();
        bytes.push(0);
        assert_eq!(Identifier::decode(&bytes), None, "trailing byte");
        let bytes = sample("alice").encode();
        assert_eq!(Identifier::decode(&bytes[..bytes.len() - 1]), None, "truncated");
        let mut bytes = sample("alice").encode();
        bytes[1] = 2;
        assert_eq!(Identifier::decode(&bytes), None, "other version");
    }

    #[test]
    fn claims_ride_in_a_fifth_item() {
        let claims =
            CustomClaims::from_json(&format!(r#"{{"roles":["admin"],"pad":"{}"}}"#, "p".repeat(400)))
                .unwrap();
        let id = sample("alice").with_claims(claims.clone());
        let bytes = id.encode();
        assert_eq!(bytes[0], PREFIX_ARRAY_CLAIMS);
        assert_eq!(Identifier::peek(&bytes), Some((id.kid, id.tid)));
        assert_eq!(Identifier::decode(&bytes), Some(id.clone()));
        let v: ciborium::value::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(v.as_array().unwrap()[4].as_text(), Some(claims.to_json()));
        // Empty claims leave the old 4-item form, byte for byte.
        let plain = sample("alice").with_claims(CustomClaims::from_json("{}").unwrap());
        assert_eq!(plain.encode(), sample("alice").encode());
        // A 4-item head with a trailing item, or a 5-item head without one, is not ours.
        let mut four = bytes.clone();
        four[0] = PREFIX_ARRAY;
        assert_eq!(Identifier::decode(&four), None);
        let mut five = sample("alice").encode();
        five[0] = PREFIX_ARRAY_CLAIMS;
        assert_eq!(Identifier::decode(&five), None);
        // Claims that break the rules (a registered name), even under a valid head, are not ours.
        let v = ciborium::value::Value::Array(vec![
            ciborium::value::Value::Integer(1.into()),
            ciborium::value::Value::Bytes(vec![1; 8]),
            ciborium::value::Value::Bytes(vec![2; 16]),
            ciborium::value::Value::Text("alice".into()),
            ciborium::value::Value::Text(r#"{"sub":"root"}"#.into()),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        assert_eq!(Identifier::decode(&out), None);
    }

    #[test]
    fn subject_limit() {
        let long = "a".repeat(MAX_SUBJECT + 1);
        assert!(matches!(
            Identifier::new(KeyId([0; 8]), TokenId([0; 16]), long),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn hex_ids() {
        let t = TokenId([0xab; 16]);
        assert_eq!(t.to_string().parse::<TokenId>().unwrap(), t);
        assert!("zz".parse::<KeyId>().is_err());
    }
}
