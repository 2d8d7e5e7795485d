//! Attenuation flags (`--read-only`, `--allow`, `--resource`, `--not-before`, `--expires`,
//! `--client-ip`, `--caveat`) turned into caveat text.

use anyhow::{bail, Context as _, Result};
use tessera_core::Predicate;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Flags that narrow a token. Every flag adds one caveat; all caveats must hold.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct Narrow {
    /// Add a caveat as text, e.g. 'allow read' or an application predicate (repeatable).
    #[arg(long = "caveat", value_name = "TEXT")]
    caveats: Vec<String>,
    /// Read-only: adds `allow read`.
    #[arg(long)]
    read_only: bool,
    /// Allowed operation (repeatable; together they form one `allow` caveat).
    #[arg(long = "allow", value_name = "OP")]
    allow: Vec<String>,
    /// Allowed resource, or prefix ending in `/*` (repeatable; one `resource` caveat).
    #[arg(long = "resource", value_name = "NAME")]
    resources: Vec<String>,
    /// Not valid before TIME (RFC 3339): adds `time-after`.
    #[arg(long, value_name = "TIME")]
    not_before: Option<String>,
    /// Expires at TIME (RFC 3339) or after DURATION from now (e.g. 6h, 2m): adds `time-before`.
    #[arg(long, value_name = "TIME|DURATION")]
    expires: Option<String>,
    /// Allowed client network or address (repeatable; one `client-ip` caveat).
    #[arg(long = "client-ip", value_name = "NET")]
    client_ips: Vec<String>,
}

fn words(flag: &str, items: &[String]) -> Result<String> {
    if let Some(bad) = items.iter().find(|i| i.is_empty() || i.chars().any(char::is_whitespace)) {
        bail!("{flag} \"{bad}\" must be one word without spaces");
    }
    Ok(items.join(" "))
}

/// RFC 3339 time, or a duration from `now`.
pub(crate) fn time_or_duration(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let d = humantime::parse_duration(text)
        .with_context(|| format!("\"{text}\" is neither an RFC 3339 time nor a duration like 6h"))?;
    Ok(now + d)
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> Result<String> {
    Ok(t.replace_nanosecond(0).unwrap_or(t).format(&Rfc3339)?)
}

impl Narrow {
    /// The caveats, validated, in flag order: texts, allow, resource, time, client-ip.
    pub(crate) fn caveats(&self, now: OffsetDateTime) -> Result<Vec<String>> {
        let mut out = self.caveats.clone();
        if self.read_only {
            out.push("allow read".into());
        }
        if !self.allow.is_empty() {
            out.push(format!("allow {}", words("--allow", &self.allow)?));
        }
        if !self.resources.is_empty() {
            out.push(format!("resource {}", words("--resource", &self.resources)?));
        }
        if let Some(t) = &self.not_before {
            let t = OffsetDateTime::parse(t, &Rfc3339)
                .with_context(|| format!("--not-before \"{t}\" is not RFC 3339"))?;
            out.push(format!("time-after {}", rfc3339(t)?));
        }
        if let Some(e) = &self.expires {
            out.push(format!("time-before {}", rfc3339(time_or_duration(e, now)?)?));
        }
        if !self.client_ips.is_empty() {
            out.push(format!("client-ip {}", words("--client-ip", &self.client_ips)?));
        }
        for c in &out {
            if c.is_empty() {
                bail!("empty caveat");
            }
            Predicate::validate(c.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(out)
    }
}
