//! The arguments of built-in caveats, read on every verification: times (the one RFC 3339 form
//! Tessera writes, without the general parser), networks (canonical IPv4 without `ipnet`'s general
//! parser) and resource names (dot segments, pattern matching). Every fast path accepts only a
//! subset of what the general parser does and agrees with it there; tests hold them to it.

use std::net::IpAddr;

use ipnet::IpNet;
use time::OffsetDateTime;

/// The one RFC 3339 form Tessera writes, `YYYY-MM-DDTHH:MM:SSZ`, read without the general parser
/// (the hot path of every time caveat). Anything else, including valid RFC 3339 in other forms
/// and leap seconds, is `None` and goes to the general parser, so this never decides alone what
/// a time means (a test holds the two to agreement).
pub(crate) fn parse_utc_seconds(s: &[u8]) -> Option<OffsetDateTime> {
    if s.len() != 20
        || s[4] != b'-'
        || s[7] != b'-'
        || s[10] != b'T'
        || s[13] != b':'
        || s[16] != b':'
        || s[19] != b'Z'
    {
        return None;
    }
    let digit = |i: usize| -> Option<u16> {
        let d = s[i].wrapping_sub(b'0');
        (d < 10).then_some(u16::from(d))
    };
    let two = |i: usize| -> Option<u16> { Some(digit(i)? * 10 + digit(i + 1)?) };
    let year = two(0)? * 100 + two(2)?;
    let month = time::Month::try_from(u8::try_from(two(5)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::from(year), month, u8::try_from(two(8)?).ok()?).ok()?;
    let hms = time::Time::from_hms(
        u8::try_from(two(11)?).ok()?,
        u8::try_from(two(14)?).ok()?,
        u8::try_from(two(17)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, hms).assume_utc())
}

/// Parse a network or a bare address (one host).
pub fn parse_net(arg: &str) -> Option<IpNet> {
    if let Some(net) = parse_ipv4_net(arg.as_bytes()) {
        return Some(net);
    }
    if let Ok(net) = arg.parse::<IpNet>() {
        return Some(net.trunc());
    }
    arg.parse::<IpAddr>().ok().map(IpNet::from)
}

/// The common case, `a.b.c.d/n` (or a bare `a.b.c.d`) in canonical decimal (no leading zeros),
/// read without the general parsers (the hot path of every `client-ip` caveat). Anything else is
/// `None` and goes to them; a test holds the two to agreement.
pub(crate) fn parse_ipv4_net(s: &[u8]) -> Option<IpNet> {
    fn number(s: &[u8], max: u32) -> Option<u32> {
        if s.is_empty() || s.len() > 3 || (s.len() > 1 && s[0] == b'0') {
            return None;
        }
        let mut n = 0u32;
        for &b in s {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            n = n * 10 + u32::from(d);
        }
        (n <= max).then_some(n)
    }
    let (addr, len) = match s.iter().position(|&b| b == b'/') {
        Some(i) => (&s[..i], number(&s[i + 1..], 32)?),
        None => (s, 32),
    };
    let mut octets = [0u8; 4];
    let mut parts = addr.split(|&b| b == b'.');
    for o in &mut octets {
        *o = u8::try_from(number(parts.next()?, 255)?).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(octets), u8::try_from(len).ok()?).ok()?;
    Some(IpNet::V4(net.trunc()))
}

/// Is `segment` `.` or `..`, also when written with `%2e`/`%2E` (which a server behind the
/// verifier may decode before it resolves the path)?
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return false,
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Does a resource name or pattern have a `.` or `..` segment (plain or percent-encoded)?
pub fn has_dot_segment(name: &str) -> bool {
    // Every dot segment has a `.` or a `%`: most names have neither and need no split.
    name.bytes().any(|b| b == b'.' || b == b'%') && name.split('/').any(is_dot_segment)
}

/// Does `resource` match `pattern`? Equal names match; a pattern ending in `/*` matches every
/// resource under that prefix, except paths with `.` or `..` segments below it, plain or
/// percent-encoded (fails closed).
pub fn resource_matches(pattern: &str, resource: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*').filter(|p| p.ends_with('/')) {
        return resource.strip_prefix(prefix).is_some_and(|tail| !has_dot_segment(tail));
    }
    pattern == resource
}

/// `s.split(' ')`, searching bytes: a space is one byte in UTF-8, so every piece starts and
/// ends on a character boundary. (The general string searcher costs more than these few-byte
/// words do.)
pub(crate) fn words(s: &str) -> impl Iterator<Item = &str> + '_ {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b' ') {
            Some(i) => {
                rest = r.get(i + 1..);
                r.get(..i)
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `s.split_once(' ')`, or the whole of `s` and nothing, searching bytes as [`words`] does.
pub(crate) fn first_word(s: &str) -> (&str, &str) {
    match s.bytes().position(|b| b == b' ') {
        Some(i) => (s.get(..i).unwrap_or(s), s.get(i + 1..).unwrap_or("")),
        None => (s, ""),
    }
}

/// Whether `s` has two spaces in a row.
pub(crate) fn has_double_space(s: &str) -> bool {
    s.as_bytes().windows(2).any(|w| w == b"  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    #[test]
    fn the_byte_word_splitters_agree_with_the_string_ones() {
        let cases = [
            "",
            " ",
            "  ",
            "a",
            "a b",
            " a",
            "a ",
            "a  b",
            "allow read write",
            "résumé naïve",
            "é",
            "é é",
            " é ",
            "日本 語  x",
            "client-ip 10.0.0.0/8 ::1",
            "\u{a0}a\u{a0}b",
            "a\tb c",
        ];
        for s in cases {
            assert_eq!(words(s).collect::<Vec<_>>(), s.split(' ').collect::<Vec<_>>(), "{s:?}");
            assert_eq!(first_word(s), s.split_once(' ').unwrap_or((s, "")), "{s:?}");
            assert_eq!(has_double_space(s), s.contains("  "), "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_byte_word_splitters_agree_on_any_text(s in "[a é\u{a0}日/ ]{0,16}") {
            proptest::prop_assert_eq!(words(&s).collect::<Vec<_>>(), s.split(' ').collect::<Vec<_>>());
            proptest::prop_assert_eq!(first_word(&s), s.split_once(' ').unwrap_or((&s, "")));
            proptest::prop_assert_eq!(has_double_space(&s), s.contains("  "));
        }
    }

    #[test]
    fn the_fast_ipv4_path_agrees_with_ipnet() {
        let general = |t: &str| -> Option<IpNet> {
            t.parse::<IpNet>().map(|n| n.trunc()).ok().or_else(|| t.parse::<IpAddr>().ok().map(IpNet::from))
        };
        let mut seen = 0;
        for a in [0u32, 1, 9, 10, 99, 100, 127, 192, 255] {
            for b in [0u32, 7, 168, 255] {
                for len in [0u32, 1, 8, 15, 16, 24, 31, 32] {
                    for t in [format!("{a}.{b}.3.{b}/{len}"), format!("{b}.{a}.{a}.1")] {
                        assert_eq!(parse_ipv4_net(t.as_bytes()), general(&t), "{t}");
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 500);
        // Not canonical, or not IPv4: left to the general parsers.
        for t in [
            "010.0.0.1",
            "10.0.0.1/08",
            "10.0.0.256",
            "10.0.0.1/33",
            "10.0.0",
            "10.0.0.0.1",
            "10..0.1",
            "::1",
            "10.0.0.1/",
            "/8",
            "1000.0.0.1",
            "10.0.0.1/-1",
            "+1.2.3.4",
            "1.2.3.4 ",
            "",
        ] {
            assert_eq!(parse_ipv4_net(t.as_bytes()), None, "{t}");
        }
        assert_eq!(parse_net("10.1.2.3/8"), general("10.1.2.3/8"), "truncated like ipnet");
    }

    #[test]
    fn the_fast_time_path_agrees_with_the_rfc3339_parser() {
        let full = |t: &str| OffsetDateTime::parse(t, &Rfc3339).ok();
        for t in [
            "2030-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "2024-02-29T23:59:59Z",
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_utc_seconds(t.as_bytes()), full(t), "{t}");
            assert!(parse_utc_seconds(t.as_bytes()).is_some(), "{t}");
        }
        // Not the one form: left to the general parser (which accepts or refuses it).
        for t in [
            "2023-02-29T00:00:00Z",
            "2030-13-01T00:00:00Z",
            "2030-01-01T24:00:00Z",
            "2030-01-01T00:60:00Z",
            "2016-12-31T23:59:60Z",
            "2030-01-01t00:00:00z",
            "2030-01-01T00:00:00+00:00",
            "2030-01-01T00:00:00.5Z",
            "203O-01-01T00:00:00Z",
            "2030-01-01 00:00:00Z",
            "+030-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_utc_seconds(t.as_bytes()), None, "{t}");
        }
        // Every second of a few days, and across years, agrees.
        let mut t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        for _ in 0..5000 {
            let text = t.format(&Rfc3339).unwrap();
            assert_eq!(parse_utc_seconds(text.as_bytes()), Some(t), "{text}");
            t += time::Duration::seconds(86_400 * 37 + 3_761);
        }
    }
}
