//! The policy file: its TOML shape (unknown keys refused) and its checks, each error naming the
//! line of what it is about.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::error::Error;
use crate::path::canonical;
use crate::{Host, Policy, ResourceMap, Rule, TokenSource, MAX_RULES};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Option<Spanned<TokenFile>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    header: Option<Spanned<String>>,
    cookie: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    host: Spanned<String>,
    prefix: Spanned<String>,
    #[serde(default)]
    public: Option<Spanned<bool>>,
    #[serde(default)]
    methods: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    #[serde(default)]
    resource: Option<Spanned<ResourceFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceFile {
    strip: Option<Spanned<String>>,
    keep: Option<Spanned<i64>>,
    fixed: Option<Spanned<String>>,
}

/// 1-based line of a byte offset in `text`.
fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

struct Checker<'a> {
    text: &'a str,
}

impl Checker<'_> {
    fn err<T>(&self, span: &Range<usize>, message: impl Into<String>) -> Result<T, Error> {
        Err(Error::Invalid { line: line_of(self.text, span), message: message.into() })
    }

    /// A word as the caveat language reads operations: printable, no space, no comma.
    fn word(&self, v: &Spanned<String>, what: &str) -> Result<String, Error> {
        let s = v.get_ref();
        let ok = !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic() && c != ',');
        if !ok {
            return self.err(
                &v.span(),
                format!("{what} \"{s}\" must be 1 to 128 printable characters, no space or comma"),
            );
        }
        Ok(s.clone())
    }

    fn header_name(&self, v: &Spanned<String>) -> Result<String, Error> {
        let s = v.get_ref();
        let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(is_tchar);
        if !ok {
            return self.err(&v.span(), format!("\"{s}\" is not a header name"));
        }
        if crate::is_identity_header(s) {
            return self.err(&v.span(), format!("\"{s}\" is an identity header Tessera answers with"));
        }
        Ok(s.to_ascii_lowercase())
    }

    fn cookie_name(&self, v: &Spanned<String>) -> Result<String, Error> {
        let s = v.get_ref();
        let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(is_tchar);
        if !ok {
            return self.err(&v.span(), format!("\"{s}\" is not a cookie name"));
        }
        Ok(s.clone())
    }

    fn host(&self, v: &Spanned<String>) -> Result<Host, Error> {
        let s = v.get_ref();
        if s == "*" {
            return Ok(Host::Any);
        }
        match crate::normal_host(s) {
            Ok(h) if !h.is_empty() => Ok(Host::Named(h.into_owned())),
            _ => self.err(
                &v.span(),
                format!("host \"{s}\" is neither \"*\" nor a host name (with an optional port)"),
            ),
        }
    }

    /// A prefix: a canonical path with no trailing `/` (except `/` itself).
    fn prefix(&self, v: &Spanned<String>, what: &str) -> Result<Vec<String>, Error> {
        let s = v.get_ref();
        let segs = match canonical(s) {
            Ok(segs) if !s.contains(['?', '#', '%']) && (s == "/" || !s.ends_with('/')) => segs,
            _ => {
                return self.err(
                    &v.span(),
                    format!("{what} \"{s}\" must be a plain path starting with /, without //, . or .. segments, %, ? or a trailing /"),
                )
            }
        };
        Ok(segs.segments().map(str::to_owned).collect())
    }

    fn rule(&self, r: &Spanned<RuleFile>) -> Result<(Host, Vec<String>, Rule), Error> {
        let f = r.get_ref();
        let host = self.host(&f.host)?;
        let prefix = self.prefix(&f.prefix, "prefix")?;
        let public = f.public.as_ref().is_some_and(|p| *p.get_ref());
        if public {
            if let Some(m) = &f.methods {
                return self.err(&m.span(), "a public rule takes no methods (it needs no token)");
            }
            if let Some(m) = &f.resource {
                return self.err(&m.span(), "a public rule takes no resource (it needs no token)");
            }
            return Ok((host, prefix, Rule::Public));
        }
        let mut methods = BTreeMap::new();
        if let Some(m) = &f.methods {
            for (name, op) in m.get_ref() {
                let ok = name == "*" || (!name.is_empty() && name.len() <= 32 && name.bytes().all(is_tchar));
                if !ok {
                    return self.err(
                        &op.span(),
                        format!("\"{name}\" is not an HTTP method (or \"*\" for every other)"),
                    );
                }
                if name.bytes().any(|b| b.is_ascii_lowercase()) {
                    return self.err(
                        &op.span(),
                        format!("method \"{name}\" must be in capitals (methods are case-sensitive)"),
                    );
                }
                methods.insert(name.clone(), self.word(op, "operation")?);
            }
        }
        let resource = match &f.resource {
            None => ResourceMap { strip: 0, keep: None, fixed: None },
            Some(res) => self.resource(res, &prefix)?,
        };
        Ok((host, prefix, Rule::Check { methods, resource }))
    }

    fn resource(&self, res: &Spanned<ResourceFile>, prefix: &[String]) -> Result<ResourceMap, Error> {
        let f = res.get_ref();
        if let Some(fixed) = &f.fixed {
            if f.strip.is_some() || f.keep.is_some() {
                return self.err(&res.span(), "a fixed resource takes no strip or keep");
            }
            let s = fixed.get_ref();
            if s.is_empty() || s.len() > 1024 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return self.err(
                    &fixed.span(),
                    format!("fixed resource \"{s}\" must be 1 to 1024 characters, no space"),
                );
            }
            return Ok(ResourceMap { strip: 0, keep: None, fixed: Some(s.clone()) });
        }
        let strip = match &f.strip {
            None => 0,
            Some(s) => {
                let segs = self.prefix(s, "strip")?;
                if !prefix.starts_with(&segs) {
                    return self.err(
                        &s.span(),
                        "strip must be the rule's prefix or a leading part of it (segment by segment)",
                    );
                }
                segs.len()
            }
        };
        let keep = match &f.keep {
            None => None,
            Some(k) => match usize::try_from(*k.get_ref()) {
                Ok(n) if (1..=64).contains(&n) => Some(n),
                _ => return self.err(&k.span(), format!("keep must be 1 to 64, not {}", k.get_ref())),
            },
        };
        Ok(ResourceMap { strip, keep, fixed: None })
    }
}

/// An HTTP token character (RFC 9110 `tchar`).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse and check a policy text.
pub(crate) fn parse(text: &str) -> Result<Policy, Error> {
    if text.len() > crate::MAX_POLICY_BYTES {
        return Err(Error::TooLarge { size: text.len() as u64, limit: crate::MAX_POLICY_BYTES });
    }
    let file: File = toml::from_str(text).map_err(|e| Error::Invalid {
        line: e.span().map_or(1, |s| line_of(text, &s)),
        message: e.message().trim().to_owned(),
    })?;
    let c = Checker { text };
    if file.rule.len() > MAX_RULES {
        let span = file.rule[MAX_RULES].span();
        return c.err(&span, format!("more than {MAX_RULES} rules"));
    }
    let mut token = TokenSource::default();
    if let Some(t) = &file.token {
        let f = t.get_ref();
        token.header = f.header.as_ref().map(|h| c.header_name(h)).transpose()?;
        token.cookie = f.cookie.as_ref().map(|h| c.cookie_name(h)).transpose()?;
    }
    let mut policy = Policy { token, named: Default::default(), any: None, rules: 0 };
    let mut seen: BTreeMap<(Host, Vec<String>), usize> = BTreeMap::new();
    for r in &file.rule {
        let (host, prefix, rule) = c.rule(r)?;
        let line = line_of(text, &r.span());
        if let Some(first) = seen.insert((host.clone(), prefix.clone()), line) {
            return c.err(
                &r.span(),
                format!(
                    "duplicate rule: host \"{}\" and prefix \"{}\" are already ruled on line {first}",
                    r.get_ref().host.get_ref(),
                    r.get_ref().prefix.get_ref()
                ),
            );
        }
        policy.add(host, &prefix, rule);
    }
    if policy.rules == 0 {
        return Err(Error::Invalid {
            line: 1,
            message: "the policy has no [[rule]]: every request would be refused".into(),
        });
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", &(0..1)), 1);
        assert_eq!(line_of("a\nb\nc", &(2..3)), 2);
        assert_eq!(line_of("a\nb\nc", &(4..5)), 3);
        assert_eq!(line_of("a", &(9..9)), 1);
    }
}
