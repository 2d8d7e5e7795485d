//! Tessera's forward-auth policy: which requests a proxy may pass without a token, which
//! operation on which resource a token must allow for the others, and that everything else is
//! refused.
//!
//! A policy is a TOML file (YAML is not supported: one format, parsed by the `toml` crate, with
//! every error naming its line). Its reference is in `docs/PROXIES.md`; in short:
//!
//! ```toml
//! [token]                 # optional: where the token is, besides `Authorization: Bearer`
//! header = "X-Api-Token"  # a header holding the bare token
//! cookie = "tessera"      # a cookie holding the bare token
//!
//! [[rule]]
//! host = "files.example"  # exact host (a port is optional), or "*" for hosts named nowhere
//! prefix = "/files"       # matched on whole segments; the longest matching prefix wins
//! methods = { DELETE = "delete" }       # overrides: GET and HEAD mean read, others write
//! resource = { strip = "/files", keep = 1 } # or { fixed = "files" }; default: the whole path
//!
//! [[rule]]
//! host = "*"
//! prefix = "/health"
//! public = true           # no token needed
//! ```
//!
//! ```
//! use tessera_policy::{Decision, Policy};
//! let p = Policy::from_toml("[[rule]]\nhost = \"*\"\nprefix = \"/files\"\n").unwrap();
//! assert_eq!(
//!     p.decide("example.org", "PUT", "/files/a?x=1").unwrap(),
//!     Decision::Check { operation: "write".into(), resource: "files/a".into() }
//! );
//! assert_eq!(p.decide("example.org", "GET", "/other").unwrap(), Decision::Unmatched);
//! assert!(p.decide("example.org", "GET", "/files/../admin").is_err());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod file;
mod path;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use error::Error;
pub use path::MAX_PATH_BYTES;

/// The largest policy file read, in bytes.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// The most rules a policy may have.
pub const MAX_RULES: usize = 4096;

/// The identity headers a forward-auth answer carries for the upstream, lower case.
pub const IDENTITY_HEADERS: [&str; 3] = ["x-tessera-subject", "x-tessera-tid", "x-tessera-claims"];

/// Is `name` one of the identity headers, or a spelling a proxy or upstream could take for one
/// (any case, `_` for `-`), or any other `X-Tessera-*` header? A request carrying one is refused:
/// only Tessera's answer may set them.
pub fn is_identity_header(name: &str) -> bool {
    let n = name.as_bytes();
    let prefix = b"x-tessera-";
    n.len() >= prefix.len()
        && n[..prefix.len()]
            .iter()
            .zip(prefix)
            .all(|(a, b)| (if *a == b'_' { b'-' } else { a.to_ascii_lowercase() }) == *b)
}

/// Headers that make many frameworks run a request as another method than the one the policy
/// judged (`POST` + `X-HTTP-Method-Override: DELETE`), lower case. A request carrying one, in any
/// spelling [`is_method_override_header`] takes for it, is refused by `/v1/authz` and the guard.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] =
    ["x-http-method-override", "x-http-method", "x-method-override"];

/// Is `name` one of [`METHOD_OVERRIDE_HEADERS`] in any case, with `_` for `-`
/// (`X_HTTP_METHOD_OVERRIDE`)? CGI, FastCGI and WSGI upstreams fold both spellings into the same
/// variable (`HTTP_X_HTTP_METHOD_OVERRIDE`), so both are refused.
pub fn is_method_override_header(name: &str) -> bool {
    METHOD_OVERRIDE_HEADERS.iter().any(|h| {
        h.len() == name.len()
            && name
                .bytes()
                .zip(h.bytes())
                .all(|(a, b)| (if a == b'_' { b'-' } else { a.to_ascii_lowercase() }) == b)
    })
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A public path: no token needed.
    Public,
    /// A token allowing `operation` on `resource`.
    Check {
        /// The operation, e.g. `read`.
        operation: String,
        /// The resource, e.g. `files/a`.
        resource: String,
    },
    /// No rule covers the request: it is refused.
    Unmatched,
}

/// What a request needs, borrowed from the policy and the request where it can be: what
/// [`Policy::decide_ref`] answers without allocating for a path with nothing percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionRef<'a> {
    /// A public path: no token needed.
    Public,
    /// A token allowing `operation` on `resource`.
    Check {
        /// The operation, e.g. `read`.
        operation: &'a str,
        /// The resource, e.g. `files/a`.
        resource: Cow<'a, str>,
    },
    /// No rule covers the request: it is refused.
    Unmatched,
}

impl DecisionRef<'_> {
    /// The same decision, owned.
    pub fn into_owned(self) -> Decision {
        match self {
            DecisionRef::Public => Decision::Public,
            DecisionRef::Check { operation, resource } => {
                Decision::Check { operation: operation.to_owned(), resource: resource.into_owned() }
            }
            DecisionRef::Unmatched => Decision::Unmatched,
        }
    }
}

/// Where a request's token is read from, besides `Authorization: Bearer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSource {
    /// A header holding the bare token (lower case), read when there is no bearer token.
    pub header: Option<String>,
    /// A cookie holding the bare token, read when neither header has one.
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Host {
    Any,
    Named(String),
}

#[derive(Debug, Clone)]
struct ResourceMap {
    /// Leading segments dropped.
    strip: usize,
    /// Segments kept after that (all when `None`).
    keep: Option<usize>,
    /// A resource whatever the path.
    fixed: Option<String>,
}

#[derive(Debug, Clone)]
enum Rule {
    Public,
    Check { methods: BTreeMap<String, String>, resource: ResourceMap },
}

/// The rules of one host, by prefix: its segments joined with `/` (`""` for `/`). Segments
/// never hold a `/` (an encoded one is refused), so joining loses nothing, and a request's
/// prefixes are slices of its canonical path: looked up without building a key.
type Rules = HashMap<String, Rule>;

/// A checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    token: TokenSource,
    /// The rules of the hosts the policy names, by normal host.
    named: HashMap<String, Rules>,
    /// The rules of `*`.
    any: Option<Rules>,
    rules: usize,
}

/// A host as rules and requests are compared: lower case, no trailing dot (borrowed when it
/// already is).
fn normal_host(h: &str) -> Result<Cow<'_, str>, Error> {
    let h = h.trim_end_matches('.');
    let ok = h.len() <= 255
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        && !h.starts_with(':');
    if !ok {
        return Err(Error::Host("not a host name with an optional port"));
    }
    Ok(if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    })
}

/// `host` without its port (`[::1]:80` → `[::1]`, `a:80` → `a`), if it has one.
fn without_port(host: &str) -> Option<&str> {
    let colon = host.rfind(':')?;
    let (name, port) = (&host[..colon], &host[colon + 1..]);
    let bracketed = host.starts_with('[');
    if (bracketed && !name.ends_with(']')) || (!bracketed && name.contains(':')) {
        return None;
    }
    port.bytes().all(|b| b.is_ascii_digit()).then_some(name)
}

impl Policy {
    /// Parse and check a policy from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        file::parse(text)
    }

    /// Read, parse and check a policy file (at most [`MAX_POLICY_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let read = |source| Error::Read { path: path.to_owned(), source };
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(read)?;
        let meta = file.metadata().map_err(read)?;
        // A device or FIFO (`/dev/zero`) says 0 bytes and never ends: only regular files.
        if !meta.is_file() {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
            return Err(read(e));
        }
        // Bounded read: the file may grow after the metadata was taken.
        let mut text = String::new();
        file.take(MAX_POLICY_BYTES as u64 + 1).read_to_string(&mut text).map_err(read)?;
        if text.len() > MAX_POLICY_BYTES {
            let size = meta.len().max(text.len() as u64);
            return Err(Error::TooLarge { size, limit: MAX_POLICY_BYTES });
        }
        Self::from_toml(&text)
    }

    /// Where tokens are read from.
    pub fn token_source(&self) -> &TokenSource {
        &self.token
    }

    /// How many rules the policy has.
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// What a request needs. `host` is the `Host` the client asked for (empty when unknown: only
    /// `*` rules apply), `target` the request target as sent (path and query). The rules of the
    /// most specific host the policy names apply (`host:port`, then `host`, then `*`); among them
    /// the longest prefix that matches whole segments. A path two readers could take differently
    /// (`..`, `//`, `%2F`, `%252e`...) is an error, never a decision.
    pub fn decide(&self, host: &str, method: &str, target: &str) -> Result<Decision, Error> {
        self.decide_ref(host, method, target).map(DecisionRef::into_owned)
    }

    /// [`Policy::decide`] without copies: the operation borrowed from the policy, the resource
    /// from the request target (or the policy, for a fixed one). Nothing is allocated unless
    /// the path was percent-encoded or the host is not in lower case.
    pub fn decide_ref<'a>(
        &'a self,
        host: &str,
        method: &str,
        target: &'a str,
    ) -> Result<DecisionRef<'a>, Error> {
        if method.is_empty()
            || method.len() > 32
            || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        {
            return Err(Error::Method("not an HTTP method in capitals"));
        }
        let path = path::canonical(target)?;
        let host = if host.is_empty() { Cow::Borrowed("") } else { normal_host(host)? };
        // A host the policy names uses its own rules only: no fall-through to "*".
        let named = |h: &str| if h.is_empty() { None } else { self.named.get(h) };
        let rules = named(&host).or_else(|| without_port(&host).and_then(named)).or(self.any.as_ref());
        let Some(rules) = rules else {
            return Ok(DecisionRef::Unmatched);
        };
        // The longest prefix first: the whole path, then without its last segment, down to "".
        let text: &str = &path.0;
        let mut end = text.len();
        loop {
            if let Some(rule) = rules.get(&text[..end]) {
                return Ok(rule.decision(method, path));
            }
            if end == 0 {
                return Ok(DecisionRef::Unmatched);
            }
            end = text[..end].rfind('/').unwrap_or(0);
        }
    }

    /// Add a checked rule (the file's reader has refused duplicates).
    fn add(&mut self, host: Host, prefix: &[String], rule: Rule) {
        let rules = match host {
            Host::Any => self.any.get_or_insert_with(Rules::default),
            Host::Named(h) => self.named.entry(h).or_default(),
        };
        rules.insert(prefix.join("/"), rule);
        self.rules += 1;
    }
}

impl Rule {
    fn decision<'a>(&'a self, method: &str, path: path::Canonical<'a>) -> DecisionRef<'a> {
        let Rule::Check { methods, resource } = self else {
            return DecisionRef::Public;
        };
        let operation = match methods.get(method).or_else(|| methods.get("*")) {
            Some(op) => op.as_str(),
            None if method == "GET" || method == "HEAD" => "read",
            None => "write",
        };
        if let Some(f) = &resource.fixed {
            return DecisionRef::Check { operation, resource: Cow::Borrowed(f) };
        }
        // Segments `strip..strip + keep`, joined by `/`: a slice of the canonical path.
        let text: &str = &path.0;
        let mut start = text.len();
        let mut end = text.len();
        let mut offset = 0;
        for (i, seg) in path.segments().enumerate() {
            if i == resource.strip {
                start = offset;
            }
            if resource.keep.is_some_and(|k| i == resource.strip + k) {
                end = offset - 1;
                break;
            }
            offset += seg.len() + 1;
        }
        let resource = if start >= end {
            Cow::Borrowed("/")
        } else {
            match path.0 {
                Cow::Borrowed(t) => Cow::Borrowed(&t[start..end]),
                Cow::Owned(t) => Cow::Owned(t[start..end].to_owned()),
            }
        };
        DecisionRef::Check { operation, resource }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_header_spellings() {
        for n in
            ["X-Tessera-Subject", "x_tessera_subject", "X_Tessera-Tid", "x-tessera-anything", "X-TESSERA-"]
        {
            assert!(is_identity_header(n), "{n}");
        }
        for n in ["X-Tessera", "Tessera-Subject", "X-Forwarded-For", "x-tesserasubject"] {
            assert!(!is_identity_header(n), "{n}");
        }
    }

    #[test]
    fn method_override_header_spellings() {
        for n in [
            "X-HTTP-Method-Override",
            "x-http-method",
            "X-Method-Override",
            "X_HTTP_METHOD_OVERRIDE",
            "X_HTTP_METHOD",
            "X_METHOD_OVERRIDE",
            "x_http-Method_override",
        ] {
            assert!(is_method_override_header(n), "{n}");
        }
        for n in [
            "X-HTTP-Method-Overrid",
            "X-Method",
            "X-HTTP-Method-Override-X",
            "Method-Override",
            "x.http.method",
            "",
        ] {
            assert!(!is_method_override_header(n), "{n}");
        }
    }

    #[test]
    fn ports_come_off() {
        assert_eq!(without_port("a.b:80"), Some("a.b"));
        assert_eq!(without_port("[::1]:80"), Some("[::1]"));
        assert_eq!(without_port("[::1]"), None);
        assert_eq!(without_port("a.b"), None);
        assert_eq!(without_port("a:b"), None);
    }
}
