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
    let d = time::Duration::try_from(d).context("duration too long")?;
    now.checked_add(d).with_context(|| format!("\"{text}\" from now is past the calendar's end"))
}

/// `t` in whole seconds, rounded down: right for an upper bound (`time-before`), which it only
/// narrows.
pub(crate) fn rfc3339(t: OffsetDateTime) -> Result<String> {
    Ok(t.replace_nanosecond(0).unwrap_or(t).format(&Rfc3339)?)
}

/// `t` in whole seconds, rounded up: a lower bound (`time-after`) rounded down would make the
/// token valid before the holder asked, and a narrowing must never widen.
fn rfc3339_ceil(t: OffsetDateTime) -> Result<String> {
    let whole = t.replace_nanosecond(0).unwrap_or(t);
    let up = if whole == t {
        whole
    } else {
        whole.checked_add(time::Duration::SECOND).context("--not-before is past the calendar's end")?
    };
    rfc3339(up)
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
            out.push(format!("time-after {}", rfc3339_ceil(t)?));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn narrow_not_before(t: &str) -> Vec<String> {
        let n = Narrow { not_before: Some(t.into()), ..Narrow::default() };
        n.caveats(OffsetDateTime::UNIX_EPOCH).unwrap()
    }

    #[test]
    fn not_before_with_a_fraction_rounds_up_never_down() {
        assert_eq!(narrow_not_before("2026-12-05T01:00:41.300Z"), ["time-after 2026-12-05T01:00:42Z"]);
        assert_eq!(narrow_not_before("2026-12-05T01:00:41.000000001Z"), ["time-after 2026-12-05T01:00:42Z"]);
        assert_eq!(narrow_not_before("2026-12-31T23:59:59.5Z"), ["time-after 2027-01-01T00:00:00Z"]);
        // Whole seconds stay as they are.
        assert_eq!(narrow_not_before("2026-12-05T01:00:41Z"), ["time-after 2026-12-05T01:00:41Z"]);
    }

    #[test]
    fn times_past_the_calendar_are_errors_not_panics() {
        let n = Narrow { not_before: Some("9999-12-31T23:59:59.5Z".into()), ..Narrow::default() };
        assert!(n.caveats(OffsetDateTime::UNIX_EPOCH).is_err());
        let n = Narrow { expires: Some("100000000y".into()), ..Narrow::default() };
        assert!(n.caveats(OffsetDateTime::now_utc()).is_err());
    }

    #[test]
    fn expires_with_a_fraction_rounds_down() {
        let n = Narrow { expires: Some("2026-12-05T01:00:41.900Z".into()), ..Narrow::default() };
        assert_eq!(n.caveats(OffsetDateTime::UNIX_EPOCH).unwrap(), ["time-before 2026-12-05T01:00:41Z"]);
    }
}
