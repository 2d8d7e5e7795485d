//! `tessera keys` and `tessera tokens`: administration of the local database (the service
//! stopped): root and signing keys, token records, revocation.

use anyhow::{anyhow, Result};
use clap::Subcommand;
use tessera_core::{KeyId, TokenId};
use tessera_store::{KeyState, SigningKeyState, Store};

use crate::when;

#[derive(Subcommand)]
pub(crate) enum KeysAction {
    /// List keys (metadata only).
    List,
    /// Create a new active key; the previous one retires (still verifies).
    Rotate,
    /// Revoke a key: every token it signed stops verifying (the active key is replaced by a new one).
    Revoke {
        /// Key id (16 hex digits).
        kid: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokensAction {
    /// List a subject's token records (never token text).
    List {
        /// The subject.
        #[arg(long)]
        subject: String,
        /// Only unrevoked tokens expiring within this long (e.g. 7d).
        #[arg(long, value_name = "DURATION")]
        expiring_within: Option<String>,
    },
    /// Revoke a token and all its attenuations.
    Revoke {
        /// Token id (32 hex digits).
        tid: String,
    },
}

pub(crate) fn keys(action: KeysAction, store: &Store) -> Result<()> {
    match action {
        KeysAction::List => {
            for k in store.list_keys()? {
                let state = match k.state {
                    KeyState::Active => "active",
                    KeyState::Retired => "retired",
                    KeyState::Revoked => "revoked",
                };
                println!("{}  {state:<8} created {}", k.kid, when(k.created));
            }
            // JWT signing keys (ES256, EdDSA): the kid is the JWK thumbprint published in JWKS.
            for k in store.signing_keys() {
                let state = match k.state {
                    SigningKeyState::Next => "next",
                    SigningKeyState::Active => "active",
                    SigningKeyState::Retired => "retired",
                };
                let since = k.retired_at.or(k.activated_at).unwrap_or(k.created);
                let owner = k.owner.as_deref().map_or(String::new(), |o| format!("  app {o}"));
                println!("{}  {:<6} {state:<8} since {}{owner}", k.kid, k.alg, when(since));
            }
        }
        KeysAction::Rotate => {
            let k = store.rotate()?;
            println!("{}  active (the previous key now only verifies)", k.kid);
        }
        KeysAction::Revoke { kid } => {
            let kid: KeyId = kid.parse().map_err(|e| anyhow!("{e}"))?;
            match store.revoke_key_replacing(kid)? {
                (Some(r), active) => {
                    println!("revoked key {kid} (log entry {})", r.seq);
                    if let Some(active) = active {
                        println!("{active}  active (it replaces the revoked key)");
                    }
                }
                (None, _) => println!("key {kid} was already revoked"),
            }
        }
    }
    Ok(())
}

fn target_id(t: &tessera_store::RevocationTarget) -> String {
    match t {
        tessera_store::RevocationTarget::Token(tid) => tid.to_string(),
        tessera_store::RevocationTarget::Key(kid) => kid.to_string(),
    }
}

pub(crate) fn tokens(action: TokensAction, store: &Store) -> Result<()> {
    match action {
        TokensAction::List { subject, expiring_within } => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let until = match expiring_within {
                None => None,
                Some(w) => {
                    let d =
                        humantime::parse_duration(&w).map_err(|e| anyhow!("--expiring-within {w}: {e}"))?;
                    Some(now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
                }
            };
            for r in store.tokens_of(&subject)? {
                if until
                    .is_some_and(|u| r.revoked_at.is_some() || !r.expires.is_some_and(|e| e > now && e <= u))
                {
                    continue;
                }
                let status = if r.revoked_at.is_some() { "revoked" } else { "live" };
                let expires = r.expires.map_or("never".into(), when);
                let used = r.last_used.map_or("never".into(), when);
                println!("{}  {status:<7} expires {expires}  last used {used}  {}", r.tid, r.description);
            }
        }
        TokensAction::Revoke { tid } => {
            let tid: TokenId = tid.parse().map_err(|e| anyhow!("{e}"))?;
            let entries = store.revoke_token(tid)?;
            match entries.split_first() {
                Some((r, descendants)) => {
                    println!("revoked token {tid} and its attenuations (log entry {})", r.seq);
                    for d in descendants {
                        println!("revoked descendant {} (log entry {})", target_id(&d.target), d.seq);
                    }
                }
                None => println!("token {tid} was already revoked"),
            }
        }
    }
    Ok(())
}
