//! The predicates of the caveat language, parsed and checked against a request context (the
//! table is in the `caveat` module's documentation).

use std::collections::BTreeMap;
use std::net::IpAddr;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::args::{first_word, has_double_space, parse_utc_seconds, words};
pub use crate::args::{has_dot_segment, parse_net, resource_matches};
use crate::error::{Error, Result};

/// Names of the built-in predicates.
pub const BUILTIN: [&str; 7] =
    ["time-before", "time-after", "allow", "resource", "client-ip", "rate-limit", "once"];

/// What a request asks for: the verifier checks every caveat against it.
#[derive(Clone, Debug)]
pub struct Context {
    /// When the request happens.
    pub time: OffsetDateTime,
    /// The operation, e.g. `read`.
    pub operation: Option<String>,
    /// The resource, e.g. `issues/42`.
    pub resource: Option<String>,
    /// The client's address (IPv4-mapped IPv6 addresses are stored as IPv4).
    pub client_ip: Option<IpAddr>,
    /// The authenticated requester. When set, a token that speaks for another subject (or for
    /// none) is refused: a capability leaked to another user does not work for them.
    pub subject: Option<String>,
    /// Application-defined fields, for registered checkers.
    pub extras: BTreeMap<String, String>,
    /// When true, `allow`, `resource` and `client-ip` caveats are validated but not checked
    /// against this context: they are only returned in the [`Restrictions`](crate::Restrictions). Time caveats and
    /// application caveats are still checked. For JWT envelopes, whose `cap` claim carries the
    /// deferred restrictions to the service that enforces them. Never use it to authorize a request.
    pub defer_scope: bool,
}

impl Context {
    /// A context at the given time with nothing else set.
    pub fn at(time: OffsetDateTime) -> Self {
        Context {
            time,
            operation: None,
            resource: None,
            client_ip: None,
            subject: None,
            extras: BTreeMap::new(),
            defer_scope: false,
        }
    }

    /// A context that checks time and application caveats only and defers `allow`, `resource`
    /// and `client-ip` to the caller (see [`Context::defer_scope`]).
    pub fn deferring_scope(time: OffsetDateTime) -> Self {
        Context { defer_scope: true, ..Self::at(time) }
    }

    /// A context at the current time.
    pub fn now() -> Self {
        Self::at(OffsetDateTime::now_utc())
    }

    /// Set the operation.
    pub fn operation(mut self, op: impl Into<String>) -> Self {
        self.operation = Some(op.into());
        self
    }

    /// Set the resource.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Set the authenticated requester (see [`Context::subject`]).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Refuse `token_subject` unless it is the requester's (when the context names one).
    pub(crate) fn check_subject(&self, token_subject: Option<&str>) -> Result<()> {
        match (&self.subject, token_subject) {
            (None, _) => Ok(()),
            (Some(want), Some(have)) if want == have => Ok(()),
            (Some(want), have) => Err(Error::CaveatNotMet {
                caveat: "subject".into(),
                reason: format!(
                    "token speaks for {}, the request is by \"{want}\"",
                    have.map_or("no subject".to_owned(), |h| format!("\"{h}\""))
                ),
            }),
        }
    }

    /// Set the client address.
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(canonical_ip(ip));
        self
    }

    /// Set an application-defined field.
    pub fn extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extras.insert(key.into(), value.into());
        self
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A parsed first-party caveat.
#[derive(Clone, Debug)]
pub enum Predicate<'a> {
    /// `time-before T`
    TimeBefore(OffsetDateTime),
    /// `time-after T`
    TimeAfter(OffsetDateTime),
    /// `allow op...` (the arguments, space separated)
    Allow(&'a str),
    /// `resource name...`
    Resource(&'a str),
    /// `client-ip net...`
    ClientIp(&'a str),
    /// `rate-limit N/P`: at most N uses of the token family per period P (counted by the service).
    RateLimit(RateLimit),
    /// `once`: the token family works for exactly one successful use (recorded by the service).
    Once,
    /// Any other predicate: application-defined (the whole caveat text).
    Other(&'a str),
}

/// A `rate-limit` caveat's budget: `count` uses per `period` seconds (fixed windows aligned to
/// the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RateLimit {
    /// Uses allowed per window (1 to 10^9).
    pub count: u64,
    /// Window length in seconds (1 s to 30 d).
    pub period: u64,
}

impl RateLimit {
    /// Parse `N/P`: a count, and a period of an optional multiplier and a unit `s`, `m`, `h`, `d`
    /// (`100/1m`, `5/s`, `1000/d`).
    pub fn parse(arg: &str) -> Option<RateLimit> {
        let (n, p) = arg.split_once('/')?;
        let digits = |t: &str| !t.is_empty() && t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(n) {
            return None;
        }
        let count: u64 = n.parse().ok()?;
        // The unit is the last byte; a multi-byte last character is no unit (and must not be
        // split inside).
        if !p.as_bytes().last()?.is_ascii() {
            return None;
        }
        let (k, unit) = p.split_at(p.len() - 1);
        let k: u64 = if k.is_empty() {
            1
        } else if digits(k) {
            k.parse().ok()?
        } else {
            return None;
        };
        let unit = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        };
        let period = k.checked_mul(unit)?;
        ((1..=1_000_000_000).contains(&count) && (1..=30 * 86_400).contains(&period))
            .then_some(RateLimit { count, period })
    }
}

impl std::fmt::Display for RateLimit {
    /// The canonical form: the largest unit that divides the period.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (k, unit) = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")]
            .into_iter()
            .find(|(u, _)| self.period % u == 0)
            .map_or((self.period, "s"), |(u, n)| (self.period / u, n));
        write!(f, "{}/{k}{unit}", self.count)
    }
}

fn malformed(text: &str, reason: impl Into<String>) -> Error {
    Error::MalformedCaveat { caveat: text.to_owned(), reason: reason.into() }
}

fn args(text: &str, name: &str, rest: &str) -> Result<()> {
    if rest.is_empty() {
        return Err(malformed(text, format!("{name} needs at least one argument")));
    }
    if rest.starts_with(' ') || rest.ends_with(' ') || has_double_space(rest) {
        return Err(malformed(text, "arguments are separated by single spaces"));
    }
    Ok(())
}

fn parse_time(text: &str, arg: &str) -> Result<OffsetDateTime> {
    if let Some(t) = parse_utc_seconds(arg.as_bytes()) {
        return Ok(t);
    }
    if arg.contains(' ') {
        return Err(malformed(text, "takes exactly one RFC 3339 time"));
    }
    OffsetDateTime::parse(arg, &Rfc3339)
        .map_err(|_| malformed(text, "time must be RFC 3339, e.g. 2030-01-01T00:00:00Z"))
}

impl<'a> Predicate<'a> {
    /// Parse a caveat id. Non-UTF-8 caveats are unknown; built-in names with bad arguments are
    /// malformed. (`client-ip` networks are parsed by [`Predicate::check`], in the same pass that
    /// matches them, or all at once by [`Predicate::validate`].)
    pub fn parse(cid: &'a [u8]) -> Result<Predicate<'a>> {
        let text = std::str::from_utf8(cid)
            .map_err(|_| Error::UnknownCaveat(String::from_utf8_lossy(cid).into_owned()))?;
        let (name, rest) = first_word(text);
        Ok(match name {
            "time-before" => Predicate::TimeBefore(parse_time(text, rest)?),
            "time-after" => Predicate::TimeAfter(parse_time(text, rest)?),
            "allow" => {
                args(text, name, rest)?;
                Predicate::Allow(rest)
            }
            "resource" => {
                args(text, name, rest)?;
                if let Some(bad) = words(rest).find(|r| has_dot_segment(r)) {
                    return Err(malformed(
                        text,
                        format!("\"{bad}\" has a `.` or `..` segment (also percent-encoded): name resources plainly"),
                    ));
                }
                Predicate::Resource(rest)
            }
            "client-ip" => {
                args(text, name, rest)?;
                Predicate::ClientIp(rest)
            }
            "rate-limit" => Predicate::RateLimit(RateLimit::parse(rest).ok_or_else(|| {
                malformed(
                    text,
                    "takes one budget N/P: a count of 1 to 10^9 per period of 1s to 30d, e.g. 100/1m",
                )
            })?),
            "once" if rest.is_empty() && text == "once" => Predicate::Once,
            "once" => return Err(malformed(text, "takes no arguments")),
            _ => Predicate::Other(text),
        })
    }

    /// Parse and fully validate (every `client-ip` network), as attenuation does.
    pub fn validate(cid: &'a [u8]) -> Result<Predicate<'a>> {
        let p = Self::parse(cid)?;
        if let Predicate::ClientIp(nets) = p {
            if let Some(bad) = words(nets).find(|a| parse_net(a).is_none()) {
                let text = String::from_utf8_lossy(cid);
                return Err(malformed(&text, format!("\"{bad}\" is not an IP address or network")));
            }
        }
        Ok(p)
    }

    /// Check a built-in predicate against a request.
    /// [`Predicate::Other`] never holds here (the verifier consults registered checkers).
    pub fn check(&self, ctx: &Context) -> Result<(), Failure> {
        if ctx.defer_scope {
            if let Predicate::ClientIp(nets) = self {
                if let Some(bad) = words(nets).find(|a| parse_net(a).is_none()) {
                    return Err(Failure::Malformed(format!("\"{bad}\" is not an IP address or network")));
                }
            }
            if matches!(self, Predicate::Allow(_) | Predicate::Resource(_) | Predicate::ClientIp(_)) {
                return Ok(());
            }
        }
        if let Predicate::ClientIp(nets) = self {
            // One pass: every network must parse, and one must contain the client.
            let mut hit = false;
            for arg in words(nets) {
                let net = parse_net(arg).ok_or_else(|| {
                    Failure::Malformed(format!("\"{arg}\" is not an IP address or network"))
                })?;
                hit |= ctx.client_ip.is_some_and(|ip| net.contains(&ip));
            }
            return match ctx.client_ip {
                _ if hit => Ok(()),
                Some(ip) => Err(Failure::Unmet(format!("client address {ip} is not allowed"))),
                None => Err(Failure::Unmet("client address is unknown".into())),
            };
        }
        self.check_unmet(ctx).map_err(Failure::Unmet)
    }

    fn check_unmet(&self, ctx: &Context) -> Result<(), String> {
        match self {
            Predicate::TimeBefore(t) if ctx.time < *t => Ok(()),
            Predicate::TimeBefore(_) => Err("token has expired".into()),
            Predicate::TimeAfter(t) if ctx.time >= *t => Ok(()),
            Predicate::TimeAfter(_) => Err("token is not valid yet".into()),
            Predicate::Allow(ops) => match &ctx.operation {
                Some(op) if words(ops).any(|a| a == op) => Ok(()),
                Some(op) => Err(format!("operation \"{op}\" is not allowed")),
                None => Err("request names no operation".into()),
            },
            Predicate::Resource(names) => match &ctx.resource {
                Some(r) if words(names).any(|p| resource_matches(p, r)) => Ok(()),
                Some(r) => Err(format!("resource \"{r}\" is not allowed")),
                None => Err("request names no resource".into()),
            },
            Predicate::RateLimit(_) | Predicate::Once => {
                Err("checked by the Tessera service (it holds the counters and uses); an offline verifier fails closed".into())
            }
            Predicate::ClientIp(_) | Predicate::Other(_) => Err("no checker for this caveat".into()),
        }
    }
}

/// Why a built-in caveat does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Well-formed, but the request does not satisfy it.
    Unmet(String),
    /// An argument does not parse.
    Malformed(String),
}

/// Check that a caveat may be added: not empty, within limits, and well-formed if built-in.
pub(crate) fn validate(cid: &[u8]) -> Result<()> {
    if cid.is_empty() {
        return Err(Error::MalformedCaveat { caveat: String::new(), reason: "caveat is empty".into() });
    }
    Predicate::validate(cid).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restrictions::Restrictions;
    use time::macros::datetime;

    fn ctx() -> Context {
        Context::at(datetime!(2027-06-01 0:00 UTC))
            .operation("read")
            .resource("issues/42")
            .client_ip("10.1.2.3".parse().unwrap())
    }

    fn holds(caveat: &str, ctx: &Context) -> bool {
        Predicate::parse(caveat.as_bytes()).unwrap().check(ctx).is_ok()
    }

    #[test]
    fn builtins_hold_and_fail() {
        let c = ctx();
        for (cav, ok) in [
            ("time-before 2030-01-01T00:00:00Z", true),
            ("time-before 2027-06-01T00:00:00Z", false),
            ("time-after 2027-06-01T00:00:00Z", true),
            ("time-after 2027-06-01T00:00:01Z", false),
            ("time-before 2027-06-01T02:00:00+02:00", false),
            ("allow read", true),
            ("allow write read", true),
            ("allow write", false),
            ("resource issues/42", true),
            ("resource issues/*", true),
            ("resource issues/4", false),
            ("resource issues", false),
            ("resource other/* issues/42", true),
            ("resource *", false),
            ("client-ip 10.0.0.0/8", true),
            ("client-ip 10.1.2.3", true),
            ("client-ip 10.1.2.4", false),
            ("client-ip 192.168.0.0/16 10.1.0.0/16", true),
            ("client-ip ::1", false),
        ] {
            assert_eq!(holds(cav, &c), ok, "{cav}");
        }
    }

    #[test]
    fn missing_context_fails_closed() {
        let c = Context::at(datetime!(2027-06-01 0:00 UTC));
        for cav in ["allow read", "resource issues/42", "client-ip 10.0.0.0/8"] {
            assert!(!holds(cav, &c), "{cav}");
        }
    }

    #[test]
    fn deferred_scope_checks_only_time_and_validity() {
        let c = Context::deferring_scope(datetime!(2027-06-01 0:00 UTC));
        assert!(holds("allow write", &c));
        assert!(holds("resource elsewhere", &c));
        assert!(holds("client-ip 192.168.0.0/16", &c));
        assert!(!holds("time-before 2027-01-01T00:00:00Z", &c));
        let p = Predicate::parse(b"client-ip nonsense").unwrap();
        assert!(matches!(p.check(&c), Err(Failure::Malformed(_))));
    }

    #[test]
    fn ipv4_mapped_client_is_treated_as_ipv4() {
        let c = Context::now().client_ip("::ffff:10.1.2.3".parse().unwrap());
        assert!(holds("client-ip 10.0.0.0/8", &c));
    }

    #[test]
    fn wildcard_refuses_dot_segments() {
        assert!(resource_matches("issues/*", "issues/42/comments"));
        assert!(resource_matches("issues/*", "issues/a.b/..c/%2ex"));
        assert!(!resource_matches("issues/*", "issues/../admin"));
        assert!(!resource_matches("issues/*", "issues/./x"));
        assert!(!resource_matches("issues/*", "issues/%2e%2E/admin"));
        assert!(!resource_matches("issues/*", "issues/.%2e/admin"));
        assert!(!resource_matches("issues/*", "issues/%2E"));
        assert!(!resource_matches("issues/*", "issuesX/1"));
    }

    #[test]
    fn resource_caveats_with_dot_segments_are_malformed() {
        for cav in [
            "resource issues/../admin/*",
            "resource issues/./x",
            "resource ok issues/%2e%2e/admin/*",
            "resource issues/.%2E/x",
            "resource ..",
            "resource %2e/*",
        ] {
            assert!(matches!(Predicate::parse(cav.as_bytes()), Err(Error::MalformedCaveat { .. })), "{cav}");
        }
        for cav in ["resource issues/a.b", "resource issues/.../x", "resource v1.2/*"] {
            assert!(Predicate::parse(cav.as_bytes()).is_ok(), "{cav}");
        }
    }

    #[test]
    fn folding_two_wildcards_keeps_only_what_both_allow() {
        // The narrower pattern survives only if the wider one allows its prefix.
        let r = fold(&["resource issues/*", "resource issues/7/*"]);
        assert_eq!(r.resources, Some(vec!["issues/7/*".to_owned()]));
        let r = fold(&["resource issues/7/*", "resource issues/*"]);
        assert_eq!(r.resources, Some(vec!["issues/7/*".to_owned()]));
        let r = fold(&["resource issues/*", "resource issuesX/*"]);
        assert_eq!(r.resources, Some(vec![]));
    }

    #[test]
    fn malformed_builtins_are_errors() {
        for cav in [
            "time-before",
            "time-before tomorrow",
            "time-before  2030-01-01T00:00:00Z",
            "time-before 2030-01-01T00:00:00Z 2031-01-01T00:00:00Z",
            "allow",
            "allow  read",
            "allow read ",
            "resource",
            "client-ip 10.0.0.0/33",
            "client-ip example.com",
        ] {
            assert!(
                matches!(Predicate::validate(cav.as_bytes()), Err(Error::MalformedCaveat { .. })),
                "{cav}"
            );
        }
        // check() rejects a bad network even when another one matches.
        let p = Predicate::parse(b"client-ip 10.0.0.0/8 nonsense").unwrap();
        assert!(matches!(p.check(&ctx()), Err(Failure::Malformed(_))));
        assert!(matches!(Predicate::parse(b"\xff\xfe"), Err(Error::UnknownCaveat(_))));
        assert!(matches!(Predicate::parse(b"account = 42"), Ok(Predicate::Other("account = 42"))));
    }

    fn fold(caveats: &[&str]) -> Restrictions {
        let mut r = Restrictions::default();
        for c in caveats {
            r.add(&Predicate::parse(c.as_bytes()).unwrap());
        }
        r
    }

    #[test]
    fn restrictions_intersect() {
        let r = fold(&[
            "allow read write",
            "allow read delete",
            "resource issues/* wiki/*",
            "resource issues/42 issues/7/* docs/x",
            "client-ip 10.0.0.0/8 192.168.1.0/24",
            "client-ip 10.1.0.0/16",
            "time-before 2030-01-01T00:00:00Z",
            "time-before 2029-01-01T00:00:00Z",
            "time-after 2026-01-01T00:00:00Z",
        ]);
        assert_eq!(r.operations, Some(vec!["read".to_owned()]));
        assert_eq!(r.resources, Some(vec!["issues/42".to_owned(), "issues/7/*".to_owned()]));
        assert_eq!(r.networks, Some(vec!["10.1.0.0/16".parse().unwrap()]));
        assert_eq!(r.expires, Some(datetime!(2029-01-01 0:00 UTC)));
        assert_eq!(r.not_before, Some(datetime!(2026-01-01 0:00 UTC)));
        let c = ctx();
        assert!(r.check(&c).is_ok());
        assert!(r.check(&c.clone().operation("write")).is_err());
        let disjoint = fold(&["allow read", "allow write"]);
        assert_eq!(disjoint.operations, Some(vec![]));
        assert!(disjoint.check(&ctx()).is_err());
    }
}
