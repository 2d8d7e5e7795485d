//! `tessera jwt` (exchange a token for an envelope, locally or through a service) and
//! `tessera jwt-check` (verify an envelope as a JWT-only service would: HS256 with the envelope
//! key, or ES256/EdDSA from a JWKS URL or file).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tessera_core::{envelope, Context, Verifier};
use time::OffsetDateTime;

use crate::{db_of, decode_all, post_json, read_arg, read_token, when, Denied};

#[derive(clap::Args)]
pub(crate) struct JwtArgs {
    /// The token (`-` or absent: read standard input).
    token: Option<String>,
    /// A bound discharge (repeatable).
    #[arg(long = "discharge", value_name = "TOKEN")]
    discharges: Vec<String>,
    /// Ask a running service (POST /v1/jwt) instead of the local database.
    #[arg(long, env = "TESSERA_SERVER", conflicts_with = "db")]
    server: Option<String>,
    /// Local database to sign with.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Master key file for --db.
    #[arg(long, env = "TESSERA_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// `iss` of the envelope (--db).
    #[arg(long, env = "TESSERA_ISSUER", default_value = "tessera")]
    issuer: String,
    /// Longest lifetime of the envelope (--db).
    #[arg(long, default_value = "5m")]
    ttl: String,
    /// Algorithm asked of --server; default: the service's own (`--jwt-alg`, ES256 unless set).
    /// ES256 / EdDSA verify against the service's /.well-known/jwks.json; HS256 with the envelope
    /// key (`jwt-check --key-hex`). --db signs HS256 only.
    #[arg(long, value_parser = ["HS256", "ES256", "EdDSA"])]
    alg: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct JwtCheckArgs {
    /// The JWT (`-` or absent: read standard input).
    jwt: Option<String>,
    /// HS256: the envelope key in hex (GET /v1/keys/{kid}/envelope-key).
    #[arg(long, value_name = "HEX", required_unless_present = "jwks", conflicts_with = "jwks")]
    key_hex: Option<String>,
    /// ES256 / EdDSA: the JWKS, as a URL (the service's /.well-known/jwks.json) or a file; the
    /// key is chosen by the envelope's kid and fixes the algorithm (an entry whose alg is not its
    /// key's, or whose use is not sig, names no key).
    #[arg(long, value_name = "URL|FILE")]
    jwks: Option<String>,
    /// The audience this check is for: the envelope's aud must equal it (an envelope with an
    /// aud is refused without it).
    #[arg(long)]
    aud: Option<String>,
    /// The expected issuer.
    #[arg(long, env = "TESSERA_ISSUER")]
    issuer: String,
    /// The request's operation.
    #[arg(long)]
    op: Option<String>,
    /// The request's resource.
    #[arg(long)]
    resource: Option<String>,
    /// The client's address.
    #[arg(long)]
    client_ip: Option<std::net::IpAddr>,
}

pub(crate) fn jwt(args: JwtArgs) -> Result<Result<(), Denied>> {
    let token = read_token(args.token)?;
    if let Some(server) = &args.server {
        let url = format!("{}/v1/jwt", server.trim_end_matches('/'));
        let mut ask = json!({"token": token.encode(), "discharges": args.discharges});
        if let Some(alg) = &args.alg {
            ask["alg"] = json!(alg);
        }
        let answer = post_json(&url, &ask)?;
        println!("{}", answer["jwt"].as_str().ok_or_else(|| anyhow!("{url} sent no jwt"))?);
        return Ok(Ok(()));
    }
    let Some(db) = &args.db else { bail!("give --db or --server") };
    if args.alg.as_deref().is_some_and(|a| a != "HS256") {
        bail!("--db signs HS256 envelopes only; ask a running service (--server) for ES256 or EdDSA");
    }
    let discharges = decode_all(&args.discharges)?;
    let store = db_of(db, args.master_key_file).open()?;
    let now = OffsetDateTime::now_utc();
    let ttl = humantime::parse_duration(&args.ttl).with_context(|| format!("--ttl {}", args.ttl))?;
    let verified =
        match Verifier::with_keys(&store).verify(&token, &discharges, &Context::deferring_scope(now)) {
            Ok(v) => v,
            Err(e) => return Ok(Err(Denied(e.to_string()))),
        };
    let kid = verified.restrictions().kid.ok_or_else(|| anyhow!("not a Tessera token"))?;
    let key = store.verifying_key(&kid).ok_or_else(|| anyhow!("key {kid} is revoked"))?;
    let ttl = time::Duration::try_from(ttl)?;
    let jwt = envelope::issue(&verified, &key.envelope_key(), &args.issuer, now, ttl)
        .map_err(|e| anyhow!("{e}"))?;
    println!("{jwt}");
    Ok(Ok(()))
}

/// Finds the key an envelope's kid names.
type KeyLookup = Box<dyn Fn(&str) -> tessera_core::Result<envelope::VerifyKey>>;

/// A JWKS from a URL or a file.
fn load_jwks(at: &str) -> Result<Value> {
    let text = if at.starts_with("http://") || at.starts_with("https://") {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(true)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .new_agent();
        let mut answer = agent.get(at).call().with_context(|| format!("GET {at}"))?;
        answer
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_string()
            .with_context(|| format!("GET {at}"))?
    } else {
        std::fs::read_to_string(at).with_context(|| format!("reading {at}"))?
    };
    let jwks: Value = serde_json::from_str(&text).with_context(|| format!("{at} is not JSON"))?;
    if !jwks["keys"].is_array() {
        bail!("{at} is not a JWK Set (no \"keys\" array)");
    }
    Ok(jwks)
}

pub(crate) fn jwt_check(args: JwtCheckArgs) -> Result<Result<(), Denied>> {
    let text = read_arg(args.jwt)?;
    let key: KeyLookup = match (&args.key_hex, &args.jwks) {
        (Some(hex), _) => {
            let hex = hex.trim();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("--key-hex must be 64 hex digits");
            }
            let mut key = [0u8; 32];
            for (i, b) in key.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
            }
            let key = envelope::EnvelopeKey::from_bytes(key);
            Box::new(move |_| Ok(envelope::VerifyKey::Hs256(key.clone())))
        }
        (None, Some(at)) => {
            let jwks = load_jwks(at)?;
            Box::new(move |kid| {
                let jwk = jwks["keys"].as_array().into_iter().flatten().find(|k| k["kid"] == kid);
                let jwk = jwk
                    .ok_or_else(|| tessera_core::Error::Envelope(format!("kid {kid} is not in the JWKS")))?;
                envelope::PublicKey::from_jwk(jwk).map(envelope::VerifyKey::Public)
            })
        }
        (None, None) => bail!("give --key-hex (HS256) or --jwks (ES256, EdDSA)"),
    };
    let mut ctx = Context::now();
    ctx.operation = args.op;
    ctx.resource = args.resource;
    if let Some(ip) = args.client_ip {
        ctx = ctx.client_ip(ip);
    }
    match envelope::decode_with(text.trim(), key, &args.issuer, args.aud.as_deref(), &ctx) {
        Ok(claims) => {
            println!(
                "allowed\nsubject:  {}\ntoken id: {}\nexpires:  {}",
                claims.sub,
                claims.jti,
                when(claims.exp)
            );
            Ok(Ok(()))
        }
        Err(e @ (tessera_core::Error::Envelope(_) | tessera_core::Error::TooLarge { .. }))
            if !text.contains('.') =>
        {
            Err(anyhow!("{e}"))
        }
        Err(e) => Ok(Err(Denied(e.to_string()))),
    }
}
