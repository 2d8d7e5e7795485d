//! Tickets: the caveat ids of the service's own third-party caveat (`not-revoked`).
//!
//! A ticket is `"tkt1" ‖ kid(8) ‖ nonce(24) ‖ XSalsa20-Poly1305(H(secret[kid], "tessera/ticket/v1"),
//! CBOR {ck: caveat key, cond: "not-revoked", tid})`. Only this service can open it; the discharge
//! endpoint opens it, checks the condition and signs a short-lived discharge with the caveat key.

use crypto_secretbox::aead::{Aead, KeyInit as _};
use crypto_secretbox::XSalsa20Poly1305;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tessera_core::{KeyId, RootKey, TokenId};
use zeroize::{Zeroize, Zeroizing};

const MAGIC: &[u8; 4] = b"tkt1";
/// The only condition tickets carry today.
pub(crate) const NOT_REVOKED: &str = "not-revoked";

#[derive(Serialize, Deserialize)]
struct Sealed {
    #[serde(with = "serde_bytes32")]
    ck: [u8; 32],
    cond: String,
    tid: [u8; 16],
}

impl Drop for Sealed {
    /// The caveat key is a secret: wipe this copy of it.
    fn drop(&mut self) {
        self.ck.zeroize();
    }
}

mod serde_bytes32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        match ciborium::value::Value::deserialize(d)? {
            ciborium::value::Value::Bytes(b) => {
                let b = zeroize::Zeroizing::new(b);
                b.as_slice().try_into().map_err(|_| serde::de::Error::custom("length"))
            }
            _ => Err(serde::de::Error::custom("expected bytes")),
        }
    }
}

/// An opened ticket.
pub(crate) struct Ticket {
    /// The caveat key, to sign the discharge with.
    pub(crate) caveat_key: RootKey,
    /// The condition to check.
    pub(crate) condition: String,
    /// The token family it protects.
    pub(crate) tid: TokenId,
    /// The key that sealed it.
    pub(crate) kid: KeyId,
}

fn cipher(secret: &RootKey) -> XSalsa20Poly1305 {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose_secret()).unwrap_or_else(|_| unreachable!());
    m.update(b"tessera/ticket/v1");
    let k = Zeroizing::new(<[u8; 32]>::from(m.finalize().into_bytes()));
    XSalsa20Poly1305::new(k.as_slice().into())
}

/// Seal a ticket for `tid` under the key `kid`; returns (caveat id, caveat key).
pub(crate) fn seal(
    kid: KeyId,
    secret: &RootKey,
    tid: TokenId,
) -> Result<(Vec<u8>, RootKey), tessera_core::Error> {
    let caveat_key = RootKey::generate()?;
    let mut body = Sealed { ck: [0u8; 32], cond: NOT_REVOKED.into(), tid: *tid.as_bytes() };
    body.ck.copy_from_slice(caveat_key.expose_secret());
    let mut plain = Zeroizing::new(Vec::new());
    ciborium::into_writer(&body, &mut *plain).map_err(|_| tessera_core::Error::Random)?;
    Ok((seal_raw(kid, secret, &plain)?, caveat_key))
}

/// Encrypt a ticket body (already encoded) under `kid`'s ticket key.
pub(crate) fn seal_raw(kid: KeyId, secret: &RootKey, plain: &[u8]) -> Result<Vec<u8>, tessera_core::Error> {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|_| tessera_core::Error::Random)?;
    let ct = cipher(secret).encrypt((&nonce).into(), plain).map_err(|_| tessera_core::Error::Random)?;
    let mut out = Vec::with_capacity(4 + 8 + 24 + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(kid.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The key id a ticket was sealed under, if it looks like a ticket.
pub(crate) fn kid_of(ticket: &[u8]) -> Option<KeyId> {
    if ticket.len() < 36 + 16 || &ticket[..4] != MAGIC {
        return None;
    }
    Some(KeyId::from_bytes(ticket[4..12].try_into().ok()?))
}

/// Open a ticket with the secret of its key; `None` when it is not a valid ticket.
pub(crate) fn open(ticket: &[u8], secret: &RootKey) -> Option<Ticket> {
    let kid = kid_of(ticket)?;
    let nonce: &[u8; 24] = ticket[12..36].try_into().ok()?;
    let plain = Zeroizing::new(cipher(secret).decrypt(nonce.into(), &ticket[36..]).ok()?);
    let mut body: Sealed = ciborium::from_reader(plain.as_slice()).ok()?;
    Some(Ticket {
        caveat_key: RootKey::new(&body.ck).ok()?,
        condition: std::mem::take(&mut body.cond),
        tid: TokenId::from_bytes(body.tid),
        kid,
    })
}
