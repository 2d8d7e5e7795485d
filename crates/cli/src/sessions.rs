//! `tessera session create|refresh|revoke`: sessions through a running service (access token +
//! refresh token, docs/SESSIONS.md). Answers are printed as JSON, for scripts.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::{post_json_as, read_arg};

#[derive(clap::Subcommand)]
pub(crate) enum SessionAction {
    /// Start a session (needs a token that may do sessions.create for the subject).
    Create {
        /// Base URL of the Tessera service.
        #[arg(long, env = "TESSERA_SERVER")]
        server: String,
        /// The token that creates the session (`-`: read standard input).
        #[arg(long, env = "TESSERA_TOKEN")]
        token: String,
        /// Whom the session is for (default: the token's own subject).
        #[arg(long)]
        subject: Option<String>,
        /// A registered application (admin only).
        #[arg(long)]
        app: Option<String>,
        /// Access token algorithm (ES256, EdDSA, HS256).
        #[arg(long)]
        alg: Option<String>,
        /// Access token lifetime (e.g. 15m).
        #[arg(long)]
        access_ttl: Option<String>,
        /// Refresh token lifetime (e.g. 72h).
        #[arg(long)]
        refresh_ttl: Option<String>,
        /// Default renew strategy: noRefresh, refreshOnExpire or refreshBoth.
        #[arg(long)]
        strategy: Option<String>,
        /// Allowed operations of the access tokens (repeatable).
        #[arg(long = "allow", value_name = "OP")]
        operations: Vec<String>,
        /// Allowed resources of the access tokens (repeatable).
        #[arg(long = "resource", value_name = "NAME")]
        resources: Vec<String>,
    },
    /// Renew: a new access token, and a new refresh token when the strategy rotates it.
    Refresh {
        /// Base URL of the Tessera service.
        #[arg(long, env = "TESSERA_SERVER")]
        server: String,
        /// The refresh token (`-` or absent: read standard input).
        refresh_token: Option<String>,
        /// noRefresh, refreshOnExpire or refreshBoth (default: the session's).
        #[arg(long)]
        strategy: Option<String>,
    },
    /// Revoke a session: every refresh token of it, on every node.
    Revoke {
        /// Base URL of the Tessera service.
        #[arg(long, env = "TESSERA_SERVER")]
        server: String,
        /// A token that may do sessions.revoke for the session's subject.
        #[arg(long, env = "TESSERA_TOKEN")]
        token: String,
        /// The session id (32 hex digits).
        session_id: String,
    },
}

fn base(server: &str) -> &str {
    server.trim_end_matches('/')
}

fn token_arg(t: &str) -> Result<String> {
    let text = read_arg(Some(t.to_owned()))?.trim().to_owned();
    if text.is_empty() {
        bail!("no token given");
    }
    Ok(text)
}

pub(crate) fn session(action: SessionAction) -> Result<()> {
    let answer = match action {
        SessionAction::Create {
            server,
            token,
            subject,
            app,
            alg,
            access_ttl,
            refresh_ttl,
            strategy,
            operations,
            resources,
        } => {
            let mut body = json!({});
            for (k, v) in [
                ("subject", subject),
                ("app", app),
                ("alg", alg),
                ("access_ttl", access_ttl),
                ("refresh_ttl", refresh_ttl),
                ("strategy", strategy),
            ] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            if !operations.is_empty() {
                body["operations"] = json!(operations);
            }
            if !resources.is_empty() {
                body["resources"] = json!(resources);
            }
            post_json_as(&format!("{}/v1/sessions", base(&server)), Some(&token_arg(&token)?), &body)?
        }
        SessionAction::Refresh { server, refresh_token, strategy } => {
            let text = read_arg(refresh_token)?.trim().to_owned();
            if text.is_empty() {
                bail!("no refresh token given (pass it as an argument or on standard input)");
            }
            let mut body = json!({"refresh_token": text});
            if let Some(s) = strategy {
                body["strategy"] = Value::String(s);
            }
            post_json_as(&format!("{}/v1/sessions/refresh", base(&server)), None, &body)?
        }
        SessionAction::Revoke { server, token, session_id } => post_json_as(
            &format!("{}/v1/sessions/{session_id}/revoke", base(&server)),
            Some(&token_arg(&token)?),
            &json!({}),
        )?,
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
