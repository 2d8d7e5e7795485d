//! Wire formats: libmacaroons V2 binary (canonical), base64 text, V2 JSON, and V1 (read only).
//!
//! Layout of V2 binary: `02 [loc] id EOS (caveat EOS)* EOS sig`, each field
//! `<type varint><len varint><bytes>`. Parsing is strict: field types must increase within a
//! section, varints must be minimal, a first-party caveat has no location, a VID is 72 bytes, the
//! signature 32, and nothing may follow it. Every limit is checked before any cryptography.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::Deserialize;

use crate::crypto::{Tag, VID_LEN};
use crate::error::{Error, Result};
use crate::layout::{check_field, Caveat, CaveatSpan, Span, Token, TRAILER_LEN};
use crate::limits::{MAX_BINARY, MAX_CAVEATS, MAX_FIELD, MAX_TOKEN_TEXT};

pub(crate) const EOS: u8 = 0;
pub(crate) const FIELD_LOCATION: u8 = 1;
pub(crate) const FIELD_IDENTIFIER: u8 = 2;
pub(crate) const FIELD_VID: u8 = 4;
pub(crate) const FIELD_SIGNATURE: u8 = 6;
const VERSION_2: u8 = 2;

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const URL_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const STD_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

/// Base64url without padding (the canonical text form).
pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Base64 in either alphabet, with or without padding (not both alphabets at once).
/// The canonical URL-safe alphabet is tried first, so the common case scans the text once.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>> {
    URL_ANY_PAD
        .decode(text)
        .or_else(|_| STD_ANY_PAD.decode(text))
        .map_err(|_| Error::Malformed("not valid base64"))
}

/// Token text in any accepted form.
pub(crate) fn decode_text(text: &str) -> Result<Token> {
    if text.len() > MAX_TOKEN_TEXT {
        return Err(Error::TooLarge { what: "token text", size: text.len(), limit: MAX_TOKEN_TEXT });
    }
    let text = text.trim_ascii();
    if text.is_empty() {
        return Err(Error::Malformed("empty token"));
    }
    if text.starts_with('{') {
        return decode_json(text);
    }
    decode_binary(decode_base64(text)?)
}

/// V2 binary, or V1 binary when the first byte is not the V2 version byte.
pub(crate) fn decode_binary(bytes: Vec<u8>) -> Result<Token> {
    if bytes.len() > MAX_BINARY {
        return Err(Error::TooLarge { what: "token", size: bytes.len(), limit: MAX_BINARY });
    }
    match bytes.first() {
        None => Err(Error::Malformed("empty token")),
        Some(&VERSION_2) => decode_v2(bytes),
        Some(_) => decode_v1(&bytes),
    }
}

// ---------------------------------------------------------------------------------------------
// V2 binary

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

#[derive(Default)]
struct Section {
    location: Option<Span>,
    id: Option<Span>,
    vid: Option<Span>,
    sig: Option<Span>,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8> {
        let b = *self.b.get(self.pos).ok_or(Error::Malformed("token is truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    /// A minimal LEB128 varint of at most 3 bytes (every legal value is below 2^21).
    #[inline]
    fn varint(&mut self) -> Result<usize> {
        // Fast path: one byte (every type and most lengths).
        if let Some(&b) = self.b.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(b as usize);
            }
        }
        let mut value = 0usize;
        for i in 0..3 {
            let b = self.byte()?;
            value |= ((b & 0x7f) as usize) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(Error::Malformed("non-minimal varint"));
                }
                return Ok(value);
            }
        }
        Err(Error::Malformed("varint too large"))
    }

    /// Next field, or `None` at an end-of-section byte.
    fn field(&mut self) -> Result<Option<(usize, Span)>> {
        let kind = self.varint()?;
        if kind == EOS as usize {
            return Ok(None);
        }
        let len = self.varint()?;
        if len > MAX_FIELD {
            return Err(Error::TooLarge { what: "field", size: len, limit: MAX_FIELD });
        }
        let start = self.pos;
        let end = start + len;
        if end > self.b.len() {
            return Err(Error::Malformed("token is truncated"));
        }
        self.pos = end;
        Ok(Some((kind, start as u32..end as u32)))
    }

    fn section(&mut self) -> Result<Section> {
        let mut s = Section::default();
        let mut last = 0usize;
        while let Some((kind, span)) = self.field()? {
            if kind <= last {
                return Err(Error::Malformed("field types out of order or repeated"));
            }
            last = kind;
            // Compare the whole varint: a type such as 258 must not alias 2 by truncation.
            let slot = match u8::try_from(kind) {
                Ok(FIELD_LOCATION) => &mut s.location,
                Ok(FIELD_IDENTIFIER) => &mut s.id,
                Ok(FIELD_VID) => &mut s.vid,
                Ok(FIELD_SIGNATURE) => &mut s.sig,
                _ => return Err(Error::Malformed("unknown field type")),
            };
            *slot = Some(span);
        }
        Ok(s)
    }

    fn utf8(&self, span: &Span) -> Result<()> {
        std::str::from_utf8(&self.b[span.start as usize..span.end as usize])
            .map(|_| ())
            .map_err(|_| Error::Malformed("location is not UTF-8"))
    }
}

fn decode_v2(buf: Vec<u8>) -> Result<Token> {
    let mut r = Reader { b: &buf, pos: 1 };
    let head = r.section()?;
    let identifier = head.id.ok_or(Error::Malformed("token has no identifier"))?;
    if head.vid.is_some() || head.sig.is_some() {
        return Err(Error::Malformed("unexpected field in token header"));
    }
    if let Some(l) = &head.location {
        r.utf8(l)?;
    }
    let mut caveats = Vec::with_capacity(8);
    loop {
        if *r.b.get(r.pos).ok_or(Error::Malformed("token is truncated"))? == EOS {
            r.pos += 1;
            break;
        }
        if caveats.len() == MAX_CAVEATS {
            return Err(Error::TooLarge { what: "caveat count", size: MAX_CAVEATS + 1, limit: MAX_CAVEATS });
        }
        let s = r.section()?;
        let id = s.id.ok_or(Error::Malformed("caveat has no identifier"))?;
        if s.sig.is_some() {
            return Err(Error::Malformed("signature inside a caveat"));
        }
        caveats.push(match s.vid {
            None if s.location.is_some() => {
                return Err(Error::Malformed("first-party caveat with a location"))
            }
            None => CaveatSpan::First(id),
            Some(vid) => {
                if (vid.end - vid.start) as usize != VID_LEN {
                    return Err(Error::Malformed("third-party verification id is not 72 bytes"));
                }
                if let Some(l) = &s.location {
                    r.utf8(l)?;
                }
                CaveatSpan::Third { location: s.location, id, vid }
            }
        });
    }
    match r.field()? {
        Some((kind, span)) if kind == FIELD_SIGNATURE as usize => {
            if span.end - span.start != 32 {
                return Err(Error::Malformed("signature is not 32 bytes"));
            }
        }
        _ => return Err(Error::Malformed("token has no signature")),
    }
    if r.pos != buf.len() {
        return Err(Error::Malformed("trailing bytes after the signature"));
    }
    Ok(Token { location: head.location, identifier, caveats, buf })
}

fn push_varint(buf: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(crate) fn push_field(buf: &mut Vec<u8>, kind: u8, bytes: &[u8]) -> Span {
    buf.push(kind);
    push_varint(buf, bytes.len());
    let start = buf.len() as u32;
    buf.extend_from_slice(bytes);
    start..buf.len() as u32
}

/// End of caveats, then the signature field.
pub(crate) fn push_trailer(buf: &mut Vec<u8>, sig: &Tag) {
    buf.push(EOS);
    buf.push(FIELD_SIGNATURE);
    buf.push(32);
    buf.extend_from_slice(sig);
}

/// Build a token from its parts, enforcing every limit.
pub(crate) fn build(
    location: Option<&str>,
    identifier: &[u8],
    caveats: &[Caveat<'_>],
    sig: &Tag,
) -> Result<Token> {
    if caveats.len() > MAX_CAVEATS {
        return Err(Error::TooLarge { what: "caveat count", size: caveats.len(), limit: MAX_CAVEATS });
    }
    check_field("identifier", identifier)?;
    let mut buf = Vec::with_capacity(16 + identifier.len() + TRAILER_LEN + 64 * caveats.len());
    buf.push(VERSION_2);
    let location = match location {
        Some(l) => {
            check_field("location", l.as_bytes())?;
            Some(push_field(&mut buf, FIELD_LOCATION, l.as_bytes()))
        }
        None => None,
    };
    let identifier = push_field(&mut buf, FIELD_IDENTIFIER, identifier);
    buf.push(EOS);
    let mut spans = Vec::with_capacity(caveats.len());
    for c in caveats {
        spans.push(match *c {
            Caveat::FirstParty(id) => {
                check_field("caveat", id)?;
                CaveatSpan::First(push_field(&mut buf, FIELD_IDENTIFIER, id))
            }
            Caveat::ThirdParty { location, id, vid } => {
                check_field("caveat", id)?;
                check_field("location", location.as_bytes())?;
                if vid.len() != VID_LEN {
                    return Err(Error::Malformed("third-party verification id is not 72 bytes"));
                }
                let location =
                    (!location.is_empty()).then(|| push_field(&mut buf, FIELD_LOCATION, location.as_bytes()));
                let id = push_field(&mut buf, FIELD_IDENTIFIER, id);
                let vid = push_field(&mut buf, FIELD_VID, vid);
                CaveatSpan::Third { location, id, vid }
            }
        });
        buf.push(EOS);
    }
    push_trailer(&mut buf, sig);
    if buf.len() > MAX_BINARY {
        return Err(Error::TooLarge { what: "token", size: buf.len(), limit: MAX_BINARY });
    }
    Ok(Token { buf, location, identifier, caveats: spans })
}

// ---------------------------------------------------------------------------------------------
// V1 binary (pymacaroons' default): packets `HHHHkey value\n`, HHHH = packet length in hex.

fn decode_v1(bytes: &[u8]) -> Result<Token> {
    let mut packets = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let head = bytes.get(pos..pos + 4).ok_or(Error::Malformed("V1 packet is truncated"))?;
        let head = std::str::from_utf8(head).map_err(|_| Error::Malformed("not a V1 or V2 token"))?;
        let len = usize::from_str_radix(head, 16).map_err(|_| Error::Malformed("not a V1 or V2 token"))?;
        if len < 6 || pos + len > bytes.len() {
            return Err(Error::Malformed("V1 packet length is wrong"));
        }
        let body = &bytes[pos + 4..pos + len];
        let body = body.strip_suffix(b"\n").ok_or(Error::Malformed("V1 packet lacks its newline"))?;
        let space = body.iter().position(|&b| b == b' ').ok_or(Error::Malformed("V1 packet has no key"))?;
        packets.push((&body[..space], &body[space + 1..]));
        pos += len;
    }
    let mut it = packets.into_iter().peekable();
    let mut location = None;
    if let Some((b"location", v)) = it.peek().copied() {
        location = Some(std::str::from_utf8(v).map_err(|_| Error::Malformed("location is not UTF-8"))?);
        it.next();
    }
    let identifier = match it.next() {
        Some((b"identifier", v)) => v,
        _ => return Err(Error::Malformed("V1 token has no identifier")),
    };
    let mut caveats = Vec::new();
    let sig = loop {
        match it.next() {
            Some((b"cid", id)) => {
                let mut vid = None;
                let mut cl = None;
                if let Some((b"vid", v)) = it.peek().copied() {
                    vid = Some(v);
                    it.next();
                }
                if let Some((b"cl", v)) = it.peek().copied() {
                    cl = Some(std::str::from_utf8(v).map_err(|_| Error::Malformed("location is not UTF-8"))?);
                    it.next();
                }
                caveats.push(match (vid, cl) {
                    (None, None) => Caveat::FirstParty(id),
                    (Some(vid), cl) => Caveat::ThirdParty { location: cl.unwrap_or(""), id, vid },
                    (None, Some(_)) => return Err(Error::Malformed("first-party caveat with a location")),
                });
            }
            Some((b"signature", s)) => break s,
            _ => return Err(Error::Malformed("unexpected V1 packet")),
        }
    };
    if it.next().is_some() {
        return Err(Error::Malformed("trailing packets after the signature"));
    }
    let sig: Tag = sig.try_into().map_err(|_| Error::Malformed("signature is not 32 bytes"))?;
    let location = location.filter(|l| !l.is_empty());
    build(location, identifier, &caveats, &sig)
}

// ---------------------------------------------------------------------------------------------
// V2 JSON

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonToken {
    v: Option<u8>,
    l: Option<String>,
    i: Option<String>,
    #[serde(rename = "i64")]
    i_64: Option<String>,
    c: Option<Vec<JsonCaveat>>,
    s64: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCaveat {
    i: Option<String>,
    #[serde(rename = "i64")]
    i_64: Option<String>,
    l: Option<String>,
    v64: Option<String>,
}

fn text_or_b64(plain: Option<String>, b64: Option<String>, what: &'static str) -> Result<Vec<u8>> {
    match (plain, b64) {
        (Some(p), None) => Ok(p.into_bytes()),
        (None, Some(b)) => decode_base64(&b),
        (Some(_), Some(_)) => Err(Error::Malformed(what)),
        (None, None) => Err(Error::Malformed(what)),
    }
}

fn decode_json(text: &str) -> Result<Token> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| Error::Malformed("token is not valid JSON"))?;
    if value.get("identifier").is_some() {
        return decode_json_v1(value);
    }
    let j: JsonToken = serde_json::from_value(value).map_err(|_| Error::Malformed("not a V2 JSON token"))?;
    if j.v.is_some_and(|v| v != 2) {
        return Err(Error::Malformed("unsupported JSON token version"));
    }
    let id = text_or_b64(j.i, j.i_64, "token needs exactly one of \"i\" and \"i64\"")?;
    let sig: Tag =
        decode_base64(&j.s64)?.try_into().map_err(|_| Error::Malformed("signature is not 32 bytes"))?;
    let raw = j.c.unwrap_or_default();
    if raw.len() > MAX_CAVEATS {
        return Err(Error::TooLarge { what: "caveat count", size: raw.len(), limit: MAX_CAVEATS });
    }
    let mut owned = Vec::with_capacity(raw.len());
    for c in raw {
        let cid = text_or_b64(c.i, c.i_64, "caveat needs exactly one of \"i\" and \"i64\"")?;
        let vid = c.v64.map(|v| decode_base64(&v)).transpose()?;
        if vid.is_none() && c.l.is_some() {
            return Err(Error::Malformed("first-party caveat with a location"));
        }
        owned.push((cid, vid, c.l.unwrap_or_default()));
    }
    let caveats: Vec<Caveat<'_>> = owned
        .iter()
        .map(|(id, vid, l)| match vid {
            None => Caveat::FirstParty(id),
            Some(vid) => Caveat::ThirdParty { location: l, id, vid },
        })
        .collect();
    build(j.l.as_deref(), &id, &caveats, &sig)
}

/// pymacaroons' V1 JSON: `{"location", "identifier", "caveats": [{"cid", "vid", "cl"}], "signature"}`
/// with the signature in hex and VIDs in base64url.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonV1 {
    location: Option<String>,
    identifier: String,
    #[serde(default)]
    caveats: Vec<JsonV1Caveat>,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonV1Caveat {
    cid: String,
    vid: Option<String>,
    cl: Option<String>,
}

fn decode_json_v1(value: serde_json::Value) -> Result<Token> {
    let j: JsonV1 = serde_json::from_value(value).map_err(|_| Error::Malformed("not a V1 JSON token"))?;
    if j.caveats.len() > MAX_CAVEATS {
        return Err(Error::TooLarge { what: "caveat count", size: j.caveats.len(), limit: MAX_CAVEATS });
    }
    let sig = crate::id::parse_hex::<32>(&j.signature)
        .ok_or(Error::Malformed("signature is not 32 bytes of hex"))?;
    let vids = j
        .caveats
        .iter()
        .map(|c| c.vid.as_deref().map(decode_base64).transpose())
        .collect::<Result<Vec<_>>>()?;
    let mut caveats = Vec::with_capacity(j.caveats.len());
    for (c, vid) in j.caveats.iter().zip(&vids) {
        caveats.push(match vid {
            Some(vid) => {
                Caveat::ThirdParty { location: c.cl.as_deref().unwrap_or(""), id: c.cid.as_bytes(), vid }
            }
            None if c.cl.is_some() => return Err(Error::Malformed("first-party caveat with a location")),
            None => Caveat::FirstParty(c.cid.as_bytes()),
        });
    }
    build(j.location.as_deref().filter(|l| !l.is_empty()), j.identifier.as_bytes(), &caveats, &sig)
}

fn put_bytes(map: &mut serde_json::Map<String, serde_json::Value>, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => map.insert(key.to_owned(), s.into()),
        Err(_) => map.insert(format!("{key}64"), encode_base64(bytes).into()),
    };
}

pub(crate) fn encode_json(t: &Token) -> String {
    use serde_json::{Map, Value};
    let mut m = Map::new();
    m.insert("v".into(), 2.into());
    if let Some(l) = t.location() {
        m.insert("l".into(), l.into());
    }
    put_bytes(&mut m, "i", t.identifier());
    let caveats = t
        .caveats()
        .map(|c| {
            let mut cm = Map::new();
            match c {
                Caveat::FirstParty(id) => put_bytes(&mut cm, "i", id),
                Caveat::ThirdParty { location, id, vid } => {
                    put_bytes(&mut cm, "i", id);
                    cm.insert("l".into(), location.into());
                    cm.insert("v64".into(), encode_base64(vid).into());
                }
            }
            Value::Object(cm)
        })
        .collect();
    m.insert("c".into(), Value::Array(caveats));
    m.insert("s64".into(), encode_base64(t.signature()).into());
    Value::Object(m).to_string()
}
