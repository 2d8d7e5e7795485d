//! `tessera audit`: read the audit trail through a running service (`GET /v1/audit`, or
//! `/v1/audit/mine` with `--mine`), once or `--follow`ing it, one line per entry or `--json`
//! (one JSON object per line, for a log shipper); and `tessera audit verify`, which checks the
//! chain in the database itself and names the first entry that breaks it.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Subcommand;
use serde_json::Value;
use tessera_store::{Actor, AuditHead, AuditVerdict};

use crate::{Db, Denied};

/// Polls of `--follow` when nothing new came: one a second.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    action: Option<AuditAction>,
    #[command(flatten)]
    read: ReadArgs,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the chain in the database (stop a service on the embedded database first): exit 0
    /// intact, 1 broken (the first entry that breaks it is named), 2 usage or cannot open.
    Verify {
        #[command(flatten)]
        db: Db,
        /// A head recorded earlier (`GET /v1/audit/head`'s `pin`, or a logged one): `SEQ:MAC`.
        /// Entries up to it must all still be there, so deleting the newest ones is found too.
        #[arg(long)]
        pinned: Option<String>,
    },
}

#[derive(clap::Args)]
struct ReadArgs {
    /// Base URL of the service.
    #[arg(long, env = "TESSERA_SERVER")]
    server: Option<String>,
    /// A token allowing `audit.read` (the admin's), or with --mine one allowing `tokens.list`.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Only the entries that concern the token's own subject (`GET /v1/audit/mine`).
    #[arg(long)]
    mine: bool,
    /// Entries with an id above this (a previous run's last id).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Entries per request (at most 1000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// The actor's subject, tid or issuer.
    #[arg(long)]
    actor: Option<String>,
    /// Entries that concern this subject.
    #[arg(long)]
    subject: Option<String>,
    /// One kind (token.mint, token.revoke, management.refused, ...).
    #[arg(long)]
    kind: Option<String>,
    /// success or refused.
    #[arg(long)]
    outcome: Option<String>,
    /// RFC 3339: entries at or after.
    #[arg(long)]
    since: Option<String>,
    /// RFC 3339: entries before.
    #[arg(long)]
    until: Option<String>,
    /// Keep polling for new entries (every second) until interrupted.
    #[arg(long)]
    follow: bool,
    /// One JSON object per line instead of words.
    #[arg(long)]
    json: bool,
}

/// The actor of what the command line writes to a local database: the service itself, saying
/// which command and which operating-system user.
pub(crate) fn local_actor(command: &str) -> Actor {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    Actor { user_agent: Some(format!("tessera {command} (local, user {user})")), ..Actor::system() }
}

pub(crate) fn audit(args: AuditArgs) -> Result<Result<(), Denied>> {
    match args.action {
        Some(AuditAction::Verify { db, pinned }) => verify(&db, pinned.as_deref()),
        None => read(&args.read).map(Ok),
    }
}

fn verify(db: &Db, pinned: Option<&str>) -> Result<Result<(), Denied>> {
    let pinned = match pinned {
        Some(p) => Some(p.parse::<AuditHead>().map_err(|e| anyhow!("--pinned: {e}"))?),
        None => None,
    };
    let store = db.open()?;
    match store.verify_audit(pinned)? {
        AuditVerdict::Intact { anchor, head, checked, unsealed } => {
            let head = head.map_or("none (nothing sealed yet)".to_owned(), |h| h.to_string());
            println!("OK: {checked} sealed entries verify; head {head}");
            if let Some(a) = anchor {
                let when = a.pruned_at_ms().map_or_else(|| "?".to_owned(), at_text);
                println!(
                    "the kept chain starts after the pruned entry {} (pruned at {when}; anchor MAC checks)",
                    a.head()
                );
            }
            if unsealed > 0 {
                println!("{unsealed} newer entries are not sealed yet (not covered by the chain)");
            }
            Ok(Ok(()))
        }
        AuditVerdict::UnauthenticatedAnchor { anchor, head, checked, unsealed } => {
            let head = head.map_or("none (nothing sealed yet)".to_owned(), |h| h.to_string());
            println!(
                "UNAUTHENTICATED anchor {anchor}: it has no MAC (written before schema 10, or replaced by one \
                 without); the {checked} sealed entries after it verify; head {head}"
            );
            println!("the next pruning writes an anchor with a MAC; until then the start of the chain is not proven");
            if unsealed > 0 {
                println!("{unsealed} newer entries are not sealed yet (not covered by the chain)");
            }
            Ok(Err(Denied(format!("the audit anchor {anchor} is unauthenticated (no MAC)"))))
        }
        AuditVerdict::Broken { seq, reason } => {
            println!("BROKEN at entry {seq}: {reason}");
            Ok(Err(Denied(format!("the audit chain breaks at entry {seq}"))))
        }
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC).
fn at_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms since the epoch"))
}

fn read(a: &ReadArgs) -> Result<()> {
    let server = a.server.as_deref().ok_or_else(|| anyhow!("give --server URL (or TESSERA_SERVER)"))?;
    let token = a.token.as_deref().ok_or_else(|| anyhow!("give --token (or TESSERA_TOKEN)"))?;
    if a.mine && (a.actor.is_some() || a.subject.is_some()) {
        bail!("--mine reads the token's own subject's entries: --actor and --subject do not apply");
    }
    let base = format!("{}/v1/audit{}", server.trim_end_matches('/'), if a.mine { "/mine" } else { "" });
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut after = a.after;
    loop {
        let mut req = agent
            .get(&base)
            .header("Authorization", format!("Bearer {token}"))
            .query("after", after.to_string())
            .query("limit", a.limit.to_string());
        for (name, value) in [
            ("actor", &a.actor),
            ("subject", &a.subject),
            ("kind", &a.kind),
            ("outcome", &a.outcome),
            ("since", &a.since),
            ("until", &a.until),
        ] {
            if let Some(v) = value {
                req = req.query(name, v);
            }
        }
        let mut res = req.call().with_context(|| format!("GET {base}"))?;
        let status = res.status();
        let text =
            res.body_mut().read_to_string().with_context(|| format!("reading the answer of {base}"))?;
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({"detail": text}));
        if !status.is_success() {
            bail!("{base} answered {status}: {}", v["detail"].as_str().unwrap_or("(no detail)"));
        }
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        for e in &entries {
            println!("{}", if a.json { e.to_string() } else { line(e) });
        }
        after = v["next"].as_u64().unwrap_or(after);
        if !a.follow {
            return Ok(());
        }
        // A full page: more may be waiting; otherwise wait a moment.
        if entries.len() < a.limit.min(1000) {
            std::thread::sleep(FOLLOW_EVERY);
        }
    }
}

/// One entry in words: `<time> <kind> <outcome> by <who> from <address> on <target> ...`.
/// `text` with each control character written as `\u{..}`.
fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() })
        .collect()
}

fn line(e: &Value) -> String {
    // Defence in depth: the store already replaces control characters, but an entry from an
    // older server (or a proxy) must not move the terminal's cursor or fake a line either.
    let s = |v: &Value| v.as_str().map(escape_controls);
    let actor = &e["actor"];
    let who = match (s(&actor["subject"]), s(&actor["issuer"])) {
        (Some(sub), _) => sub,
        (None, Some(iss)) => format!("issuer {iss}"),
        (None, None) => "-".into(),
    };
    let mut out = format!(
        "{} #{} {} {} by {who}",
        s(&e["at"]).unwrap_or_default(),
        e["id"],
        s(&e["kind"]).unwrap_or_default(),
        s(&e["outcome"]).unwrap_or_default(),
    );
    if let Some(tid) = s(&actor["tid"]) {
        out.push_str(&format!(" ({tid})"));
    }
    if let Some(addr) = s(&actor["address"]) {
        out.push_str(&format!(" from {addr}"));
    }
    let t = &e["target"];
    for (name, key) in [("token", "tid"), ("key", "kid"), ("session", "sid"), ("app", "app")] {
        if let Some(v) = s(&t[key]) {
            out.push_str(&format!(" {name} {v}"));
        }
    }
    if let Some(d) = s(&e["detail"]) {
        out.push_str(&format!(" [{d}]"));
    }
    if let Some(r) = s(&e["reason"]) {
        out.push_str(&format!(" reason: {r}"));
    }
    if let Some(id) = s(&actor["request_id"]) {
        out.push_str(&format!(" request {id}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Review finding F2: a field with a line break or a terminal escape is printed escaped.
    #[test]
    fn a_line_escapes_control_characters() {
        let evil = "x\n2026-01-01 #1 token.mint ok by admin\u{1b}[2J\u{9b}\r";
        let e = serde_json::json!({
            "at": "2026-12-05T07:00:00Z", "id": 7, "kind": "exchange.refuse", "outcome": "refused",
            "actor": {"issuer": evil, "request_id": evil, "address": "192.0.2.9"},
            "target": {"app": evil}, "detail": evil, "reason": evil,
        });
        let out = line(&e);
        assert!(!out.chars().any(char::is_control), "{out:?}");
        assert!(out.contains("\\u{1b}[2J") && out.contains("by issuer x\\u{a}2026"), "{out}");
    }
}
