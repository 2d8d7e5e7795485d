//! The signing algorithms of envelopes — the one place where they differ: HS256 (a shared
//! secret), ES256 (ECDSA P-256 with SHA-256) and EdDSA (Ed25519), through RustCrypto's `p256` and
//! `ed25519-dalek`. Public keys are exported as JWKs (RFC 7517, 7518, 8037) whose `kid` is their
//! RFC 7638 thumbprint.

use std::fmt;

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto;
use crate::crypto::EnvelopeKey;
use crate::error::{Error, Result};
use crate::format::{decode_base64, encode_base64};

/// A JWS algorithm Tessera signs envelopes with. `none` and anything else are never accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC-SHA256 with a shared secret (kept for compatibility: every verifier can also forge).
    Hs256,
    /// ECDSA on P-256 with SHA-256: what every gateway verifies.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    /// The algorithm of a JWS `alg` name (exact, case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        [Algorithm::Hs256, Algorithm::Es256, Algorithm::EdDsa].into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum Secret {
    Hs256(EnvelopeKey),
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
}

/// A private signing key of one algorithm. `Debug` prints `[redacted]`; the secret is zeroized on
/// drop (the underlying crates wipe their keys); no equality.
pub struct SigningKey(Secret);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, [redacted])", self.algorithm())
    }
}

impl SigningKey {
    /// A fresh random key of `alg` (from the operating system's generator).
    pub fn generate(alg: Algorithm) -> Result<Self> {
        loop {
            let mut bytes = Zeroizing::new([0u8; 32]);
            getrandom::fill(bytes.as_mut()).map_err(|_| Error::Random)?;
            match Self::from_secret_bytes(alg, bytes.as_ref()) {
                // A P-256 scalar of zero or above the group order: draw again (2^-128 odds).
                Err(Error::Envelope(_)) if alg == Algorithm::Es256 => continue,
                other => return other,
            }
        }
    }

    /// Load a key from its 32 secret bytes (as [`SigningKey::secret_bytes`] gives them).
    pub fn from_secret_bytes(alg: Algorithm, bytes: &[u8]) -> Result<Self> {
        let arr: &[u8; 32] =
            bytes.try_into().map_err(|_| Error::Envelope(format!("{alg} secret must be 32 bytes")))?;
        Ok(SigningKey(match alg {
            Algorithm::Hs256 => Secret::Hs256(EnvelopeKey::from_bytes(*arr)),
            Algorithm::Es256 => Secret::Es256(
                p256::ecdsa::SigningKey::from_slice(arr)
                    .map_err(|_| Error::Envelope("not a valid P-256 secret scalar".into()))?,
            ),
            Algorithm::EdDsa => Secret::EdDsa(ed25519_dalek::SigningKey::from_bytes(arr)),
        }))
    }

    /// The 32 secret bytes, to seal at rest. Never log them.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        match &self.0 {
            Secret::Hs256(k) => out.copy_from_slice(k.expose_secret()),
            Secret::Es256(k) => out.copy_from_slice(&k.to_bytes()),
            Secret::EdDsa(k) => out.copy_from_slice(&Zeroizing::new(k.to_bytes())[..]),
        }
        out
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            Secret::Hs256(_) => Algorithm::Hs256,
            Secret::Es256(_) => Algorithm::Es256,
            Secret::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    /// The public half (`None` for HS256, which has none).
    pub fn public_key(&self) -> Option<PublicKey> {
        match &self.0 {
            Secret::Hs256(_) => None,
            Secret::Es256(k) => Some(PublicKey(Public::Es256(*k.verifying_key()))),
            Secret::EdDsa(k) => Some(PublicKey(Public::EdDsa(k.verifying_key()))),
        }
    }

    /// The JWS signature of `input` (ES256: the fixed 64-byte `r ‖ s` form JWS requires).
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        match &self.0 {
            Secret::Hs256(k) => crypto::hs256_sign(k.expose_secret(), input).to_vec(),
            Secret::Es256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(input);
                sig.to_bytes().to_vec()
            }
            Secret::EdDsa(k) => k.sign(input).to_bytes().to_vec(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Public {
    Es256(p256::ecdsa::VerifyingKey),
    EdDsa(ed25519_dalek::VerifyingKey),
}

/// A public verification key (ES256 or EdDSA), as published in a JWKS.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(Public);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.algorithm(), self.thumbprint())
    }
}

fn field<'a>(jwk: &'a Value, name: &str) -> Result<&'a str> {
    jwk.get(name).and_then(Value::as_str).ok_or_else(|| Error::Envelope(format!("JWK has no \"{name}\"")))
}

fn coordinate(jwk: &Value, name: &str) -> Result<[u8; 32]> {
    decode_base64(field(jwk, name)?)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Envelope(format!("JWK \"{name}\" is not 32 bytes of base64url")))
}

impl PublicKey {
    /// The algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            Public::Es256(_) => Algorithm::Es256,
            Public::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    /// The required members of its JWK, in the lexicographic order RFC 7638 hashes.
    fn required_members(&self) -> Value {
        match &self.0 {
            Public::Es256(k) => {
                let point = k.to_sec1_point(false);
                let bytes = point.as_bytes(); // 0x04 ‖ X ‖ Y
                json!({"crv": "P-256", "kty": "EC", "x": encode_base64(&bytes[1..33]), "y": encode_base64(&bytes[33..65])})
            }
            Public::EdDsa(k) => json!({"crv": "Ed25519", "kty": "OKP", "x": encode_base64(&k.to_bytes())}),
        }
    }

    /// The RFC 7638 thumbprint (base64url of SHA-256 of the required members): the `kid`.
    pub fn thumbprint(&self) -> String {
        // serde_json writes object members sorted (BTreeMap) and without white space.
        let canonical = self.required_members().to_string();
        encode_base64(&Sha256::digest(canonical.as_bytes()))
    }

    /// The JWK to publish: required members plus `kid` (the thumbprint), `alg` and `use: sig`.
    pub fn jwk(&self) -> Value {
        let mut v = self.required_members();
        v["kid"] = json!(self.thumbprint());
        v["alg"] = json!(self.algorithm().name());
        v["use"] = json!("sig");
        v
    }

    /// Read a public key from a JWK (EC P-256 or OKP Ed25519; private members are ignored).
    ///
    /// The key fixes the algorithm it verifies, so a JWK that says otherwise is refused: `alg`,
    /// when present, must be the key's (`ES256` for P-256, `EdDSA` for Ed25519); `use`, when
    /// present, must be `sig`; `key_ops`, when present, must allow `verify` (RFC 7517 4.2-4.4).
    pub fn from_jwk(jwk: &Value) -> Result<Self> {
        let key = Self::from_jwk_members(jwk)?;
        match jwk.get("alg") {
            None => {}
            Some(Value::String(a)) if a == key.algorithm().name() => {}
            Some(a) => {
                return Err(Error::Envelope(format!(
                    "JWK \"alg\" {:.40} is not its key's algorithm {}",
                    a.to_string(),
                    key.algorithm()
                )))
            }
        }
        match jwk.get("use") {
            None => {}
            Some(Value::String(u)) if u == "sig" => {}
            Some(u) => {
                return Err(Error::Envelope(format!("JWK \"use\" {:.40} is not \"sig\"", u.to_string())))
            }
        }
        if let Some(ops) = jwk.get("key_ops") {
            let verify = ops.as_array().is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
            if !verify {
                return Err(Error::Envelope("JWK \"key_ops\" does not allow verify".into()));
            }
        }
        Ok(key)
    }

    /// The key of a JWK's `kty`, `crv` and coordinates.
    fn from_jwk_members(jwk: &Value) -> Result<Self> {
        match (field(jwk, "kty")?, field(jwk, "crv")?) {
            ("EC", "P-256") => {
                let mut sec1 = [0u8; 65];
                sec1[0] = 4;
                sec1[1..33].copy_from_slice(&coordinate(jwk, "x")?);
                sec1[33..].copy_from_slice(&coordinate(jwk, "y")?);
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map(|k| PublicKey(Public::Es256(k)))
                    .map_err(|_| Error::Envelope("JWK is not a point on P-256".into()))
            }
            ("OKP", "Ed25519") => ed25519_dalek::VerifyingKey::from_bytes(&coordinate(jwk, "x")?)
                .map(|k| PublicKey(Public::EdDsa(k)))
                .map_err(|_| Error::Envelope("JWK is not an Ed25519 public key".into())),
            (kty, crv) => Err(Error::Envelope(format!("unsupported JWK: kty {kty}, crv {crv}"))),
        }
    }

    /// Check a JWS signature over `input`.
    pub(crate) fn verify(&self, input: &[u8], sig: &[u8]) -> bool {
        match &self.0 {
            Public::Es256(k) => {
                p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(input, &s).is_ok())
            }
            Public::EdDsa(k) => <&[u8; 64]>::try_from(sig)
                .is_ok_and(|s| k.verify_strict(input, &ed25519_dalek::Signature::from_bytes(s)).is_ok()),
        }
    }
}

/// What checks an envelope's signature: the shared HS256 key, or a public key.
#[derive(Clone, Debug)]
pub enum VerifyKey {
    /// HS256.
    Hs256(EnvelopeKey),
    /// ES256 or EdDSA.
    Public(PublicKey),
}

impl VerifyKey {
    /// The one algorithm this key accepts (the header's `alg` must equal it).
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerifyKey::Hs256(_) => Algorithm::Hs256,
            VerifyKey::Public(p) => p.algorithm(),
        }
    }

    pub(crate) fn verify(&self, input: &[u8], sig: &[u8]) -> bool {
        match self {
            VerifyKey::Hs256(k) => crypto::hs256_verify(k.expose_secret(), input, sig),
            VerifyKey::Public(p) => p.verify(input, sig),
        }
    }
}
