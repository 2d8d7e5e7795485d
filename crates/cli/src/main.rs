//! `tessera`: run the service, and narrow, inspect and verify capability tokens offline.
//!
//! Exit codes: 0 success (verify: allowed), 1 verify denied, 2 usage error or malformed input.
//! Tokens come from an argument, or from standard input when the argument is `-` or absent
//! (keeps them out of shell history).

#![forbid(unsafe_code)]

mod audit;
mod envelopes;
mod grow;
mod inspect;
mod local;
mod narrow;
mod sessions;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tessera_core::{Caveat, Context, CustomClaims, RootKey, StaticKeys, Token, TokenId, Verifier};
use tessera_server::{mint_admin_token, MintSpec};
use tessera_store::{MasterKey, Store};
use time::OffsetDateTime;

use envelopes::{jwt, jwt_check, JwtArgs, JwtCheckArgs};
use narrow::Narrow;

/// Tessera: macaroon-style capability tokens.
#[derive(Parser)]
#[command(name = "tessera", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the database and its master key are: the embedded file (`--db`), or a cluster's
/// PostgreSQL (`--database`).
#[derive(clap::Args, Debug)]
struct Db {
    /// The database file (the service's `<data-dir>/tessera.redb`).
    #[arg(long, global = true, env = "TESSERA_DB", default_value = "./data/tessera.redb")]
    db: PathBuf,
    /// A cluster's PostgreSQL database instead of the file (`postgres://user:password@host/db`),
    /// as given to `tessera serve --database`; the master key from TESSERA_MASTER_KEY or
    /// --master-key-file. The service may keep running: every node follows the change.
    #[arg(long, global = true, env = "TESSERA_DATABASE_URL", hide_env_values = true)]
    database: Option<tessera_server::DatabaseUrl>,
    /// Master key file (default: master.key next to the database); TESSERA_MASTER_KEY wins.
    #[arg(long, global = true, env = "TESSERA_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// TLS to PostgreSQL, as `tessera serve --database-sslmode` (or `sslmode=` in the URL).
    #[arg(long, global = true, env = "TESSERA_DATABASE_SSLMODE")]
    database_sslmode: Option<tessera_store::SslMode>,
    /// PostgreSQL's CA, as `tessera serve --database-ca` (or `sslrootcert=` in the URL).
    #[arg(long, global = true, env = "TESSERA_DATABASE_CA")]
    database_ca: Option<PathBuf>,
}

impl Db {
    /// The connection options of `--database` (TLS from the flags; the URL may say the same).
    fn postgres_options(&self) -> tessera_store::PostgresOptions {
        tessera_store::PostgresOptions {
            sslmode: self.database_sslmode,
            ca_file: self.database_ca.clone(),
            ..tessera_store::PostgresOptions::default()
        }
    }

    fn key_path(&self) -> Result<PathBuf> {
        let path = match (&self.master_key_file, &self.database) {
            (Some(p), _) => p.clone(),
            (None, None) => self.db.parent().unwrap_or(Path::new(".")).join("master.key"),
            (None, Some(_)) if std::env::var_os(tessera_store::MASTER_KEY_ENV).is_some() => PathBuf::new(),
            (None, Some(_)) => {
                bail!("--database needs the master key: set TESSERA_MASTER_KEY or --master-key-file")
            }
        };
        if std::env::var_os(tessera_store::MASTER_KEY_ENV).is_none() && !path.exists() {
            bail!("no master key at {} (and TESSERA_MASTER_KEY is not set)", path.display());
        }
        Ok(path)
    }

    fn open(&self) -> Result<Store> {
        let given = self.db.to_string_lossy();
        if given.starts_with("postgres://") || given.starts_with("postgresql://") {
            // Never echoed: the URL may hold a password.
            bail!("--db takes the embedded database's file; for PostgreSQL use --database URL");
        }
        let key_path = self.key_path()?;
        let (master, _) = MasterKey::from_env_or_file(&key_path)?;
        let Some(url) = &self.database else {
            if !self.db.exists() {
                bail!("no database at {}", self.db.display());
            }
            return Ok(Store::open(&self.db, master)?);
        };
        let location = tessera_store::Location::Postgres {
            url: url.expose().to_owned(),
            options: self.postgres_options(),
        };
        // Whatever the driver says, the password never reaches the terminal.
        Store::open_at(&location, master, tessera_store::Freshness::default()).map_err(|e| {
            let said = e.to_string().replace(url.expose(), &url.redacted());
            anyhow::anyhow!("database {}: {said}", url.redacted())
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve(Box<ServeArgs>),
    /// Narrow a token offline (no key needed) and print the new token.
    Attenuate {
        /// The token (`-` or absent: read standard input).
        token: Option<String>,
        #[command(flatten)]
        narrow: Narrow,
    },
    /// Show what a token says, in plain words (nothing is verified).
    Inspect {
        /// The token (`-` or absent: read standard input).
        token: Option<String>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
        /// Also show the signature (it is what makes the token a credential).
        #[arg(long)]
        show_signature: bool,
    },
    /// Verify a token for a request: exit 0 allowed, 1 denied, 2 malformed input or usage.
    Verify(VerifyArgs),
    /// Mint a token locally: a plain macaroon from a key file, or a Tessera token from the database.
    Mint(MintArgs),
    /// Fetch discharges for the token's third-party caveats and print them, bound, one per line.
    Discharge {
        /// The token (`-` or absent: read standard input).
        token: Option<String>,
        /// Base URL of the Tessera service (default: each caveat's own location).
        #[arg(long, env = "TESSERA_SERVER")]
        server: Option<String>,
    },
    /// Print a JWT envelope of a verified token.
    Jwt(JwtArgs),
    /// Check a JWT envelope for a request: exit 0 allowed, 1 denied, 2 malformed input or usage.
    JwtCheck(JwtCheckArgs),
    /// Sessions through a running service: create, refresh, revoke (prints JSON).
    Session {
        #[command(subcommand)]
        action: sessions::SessionAction,
    },
    /// Manage root keys in the local database (stop the service first).
    Keys {
        #[command(subcommand)]
        action: local::KeysAction,
        #[command(flatten)]
        db: Db,
    },
    /// Manage token records in the local database (stop the service first).
    Tokens {
        #[command(subcommand)]
        action: local::TokensAction,
        #[command(flatten)]
        db: Db,
    },
    /// Read the audit trail through a running service (`--follow` to keep reading), or
    /// `audit verify` its chain in the database.
    Audit(audit::AuditArgs),
    /// Copy every record from the embedded database to PostgreSQL (`--db FILE --to postgres://...`),
    /// or back (`--database URL --to FILE`); stop the service first.
    Migrate(grow::MigrateArgs),
    /// Take a consistent snapshot of a running node's database (`POST /v1/backup`, admin token).
    Backup(grow::BackupArgs),
    /// Put a snapshot back as the database (stop the service first).
    Restore(grow::RestoreArgs),
    /// The revocation feed: replay a running source's revocations into a local database.
    Revocations {
        #[command(subcommand)]
        action: grow::RevocationsAction,
    },
    /// Mint a replacement admin token from the local database (stop the service first).
    AdminToken {
        #[command(flatten)]
        db: Db,
        /// Subject of the administrator.
        #[arg(long, env = "TESSERA_ADMIN_SUBJECT", default_value = "admin")]
        admin_subject: String,
        /// Location written into the token (the service's public URL).
        #[arg(long, env = "TESSERA_PUBLIC_URL", default_value = "")]
        location: String,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: tessera_server::Config,
}

#[derive(clap::Args, Clone)]
struct VerifyArgs {
    /// The token (`-` or absent: read standard input).
    token: Option<String>,
    /// File with a root key in hex: verifies any standard macaroon (foreign identifiers too).
    #[arg(long, conflicts_with_all = ["db", "server"], required_unless_present_any = ["db", "server"])]
    key_file: Option<PathBuf>,
    /// Verify with the keys and revocations of a local database.
    #[arg(long, conflicts_with = "server")]
    db: Option<PathBuf>,
    /// Ask a running service (POST /v1/verify).
    #[arg(long, env = "TESSERA_SERVER")]
    server: Option<String>,
    /// Master key file for --db (default: master.key next to it).
    #[arg(long, env = "TESSERA_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// A bound discharge (repeatable).
    #[arg(long = "discharge", value_name = "TOKEN")]
    discharges: Vec<String>,
    /// The request's operation.
    #[arg(long)]
    op: Option<String>,
    /// The request's resource.
    #[arg(long)]
    resource: Option<String>,
    /// The client's address.
    #[arg(long)]
    client_ip: Option<std::net::IpAddr>,
    /// The request's time (RFC 3339; default now).
    #[arg(long)]
    at: Option<String>,
    /// Accept this application caveat text (repeatable).
    #[arg(long = "satisfy", value_name = "CAVEAT")]
    satisfy: Vec<String>,
}

#[derive(clap::Args)]
struct MintArgs {
    /// Root key file (hex): mint a plain macaroon.
    #[arg(long, conflicts_with_all = ["db", "subject"], required_unless_present = "db")]
    key_file: Option<PathBuf>,
    /// Identifier for --key-file (default: random).
    #[arg(long, requires = "key_file")]
    id: Option<String>,
    /// Mint a Tessera token with the database's active key, recorded durably.
    #[arg(long, requires = "subject")]
    db: Option<PathBuf>,
    /// Subject for --db.
    #[arg(long)]
    subject: Option<String>,
    /// Description for the record (--db).
    #[arg(long, default_value = "")]
    description: String,
    /// Master key file for --db.
    #[arg(long, env = "TESSERA_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Location hint written into the token.
    #[arg(long)]
    location: Option<String>,
    /// Custom claims for --db, a JSON object bound into the token (e.g. '{"roles":["editor"]}').
    #[arg(long, requires = "db")]
    claims: Option<String>,
    #[command(flatten)]
    narrow: Narrow,
}

/// Verification denied (exit 1), as opposed to an error (exit 2).
struct Denied(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Denied(reason))) => {
            eprintln!("denied: {reason}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("tessera: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The argument, or standard input (at most 64 KiB) when it is `-` or absent.
fn read_arg(arg: Option<String>) -> Result<String> {
    match arg.as_deref() {
        None | Some("-") => {
            let mut s = String::new();
            std::io::stdin().take(64 * 1024).read_to_string(&mut s).context("reading standard input")?;
            Ok(s)
        }
        Some(t) => Ok(t.to_owned()),
    }
}

fn read_token(arg: Option<String>) -> Result<Token> {
    let text = read_arg(arg)?;
    let text = text.trim();
    if text.is_empty() {
        bail!("no token given (pass it as an argument or on standard input)");
    }
    Token::decode(text).map_err(|e| anyhow!("{e}"))
}

fn decode_all(texts: &[String]) -> Result<Vec<Token>> {
    texts.iter().map(|t| Token::decode(t.trim()).map_err(|e| anyhow!("discharge: {e}"))).collect()
}

fn read_key_file(path: &Path) -> Result<RootKey> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading key file {}", path.display()))?,
    );
    let hex: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let hex = zeroize::Zeroizing::new(hex);
    if hex.len() % 2 != 0 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("key file {} must hold the key in hex", path.display());
    }
    let bytes = zeroize::Zeroizing::new(
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()?,
    );
    RootKey::new(&bytes).map_err(|e| anyhow!("key file {}: {e}", path.display()))
}

fn db_of(db: &Path, master_key_file: Option<PathBuf>) -> Db {
    Db { db: db.to_owned(), database: None, master_key_file, database_sslmode: None, database_ca: None }
}

fn run(command: Command) -> Result<Result<(), Denied>> {
    match command {
        Command::Serve(args) => tessera_server::run(args.config)?,
        Command::Attenuate { token, narrow } => {
            let mut t = read_token(token)?;
            let caveats = narrow.caveats(OffsetDateTime::now_utc())?;
            if caveats.is_empty() {
                bail!("no caveat given: use --read-only, --allow, --resource, --expires, --not-before, --client-ip or --caveat");
            }
            for c in &caveats {
                t = t.attenuate(c).map_err(|e| anyhow!("{e}"))?;
            }
            println!("{}", t.encode());
        }
        Command::Inspect { token, json, show_signature } => {
            let t = read_token(token)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&inspect::json(&t, show_signature))?);
            } else {
                print!("{}", inspect::text(&t, show_signature));
            }
        }
        Command::Verify(args) => return verify(args),
        Command::Mint(args) => mint(args)?,
        Command::Discharge { token, server } => discharge(read_token(token)?, server)?,
        Command::Jwt(args) => return jwt(args),
        Command::JwtCheck(args) => return jwt_check(args),
        Command::Session { action } => sessions::session(action)?,
        Command::Audit(args) => return audit::audit(args),
        Command::Keys { action, db } => local::keys(action, &db.open()?)?,
        Command::Tokens { action, db } => local::tokens(action, &db.open()?)?,
        Command::Migrate(args) => grow::migrate(args)?,
        Command::Backup(args) => grow::backup(args)?,
        Command::Restore(args) => grow::restore(args)?,
        Command::Revocations { action } => grow::revocations(action)?,
        Command::AdminToken { db, admin_subject, location } => {
            let store = db.open()?;
            if store.active_key().is_none() {
                bail!("no active key: run `tessera keys rotate` first");
            }
            let actor = audit::local_actor("admin-token");
            println!("{}", mint_admin_token(&store, &actor, &location, &admin_subject)?);
        }
    }
    Ok(Ok(()))
}

fn verify_remote(server: &str, token: &Token, args: &VerifyArgs) -> Result<Result<(), Denied>> {
    let url = format!("{}/v1/verify", server.trim_end_matches('/'));
    let body = json!({
        "token": token.encode(),
        "discharges": args.discharges,
        "context": {"operation": args.op, "resource": args.resource,
                    "client_ip": args.client_ip.map(|i| i.to_string()), "time": args.at},
    });
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut res = agent
        .post(&url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .with_context(|| format!("POST {url}"))?;
    let status = res.status().as_u16();
    let v: Value = serde_json::from_str(&res.body_mut().read_to_string()?).unwrap_or(Value::Null);
    match status {
        200 => {
            let r = &v["restrictions"];
            let list = |x: &Value| {
                x.as_array().map_or("any".to_owned(), |a| {
                    a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
                })
            };
            println!("allowed");
            println!("subject:    {}", v["subject"].as_str().unwrap_or("-"));
            println!("token id:   {}", v["tid"].as_str().unwrap_or("-"));
            if let Some(c) = v.get("claims").filter(|c| c.is_object()) {
                println!("claims:     {c}");
            }
            println!("operations: {}", list(&r["operations"]));
            println!("resources:  {}", list(&r["resources"]));
            println!("client ips: {}", list(&r["client_ips"]));
            println!("expires:    {}", r["expires"].as_str().unwrap_or("never"));
            Ok(Ok(()))
        }
        401 | 403 => Ok(Err(Denied(v["detail"].as_str().unwrap_or("denied").to_owned()))),
        _ => bail!("{url} answered {status}: {}", v["detail"].as_str().unwrap_or("(no detail)")),
    }
}

fn verify(args: VerifyArgs) -> Result<Result<(), Denied>> {
    let token = read_token(args.token.clone())?;
    if let Some(server) = &args.server {
        return verify_remote(server, &token, &args);
    }
    let discharges = decode_all(&args.discharges)?;
    let time = match &args.at {
        Some(t) => narrow::time_or_duration(t, OffsetDateTime::now_utc())?,
        None => OffsetDateTime::now_utc(),
    };
    let mut ctx = Context::at(time);
    ctx.operation = args.op;
    ctx.resource = args.resource;
    if let Some(ip) = args.client_ip {
        ctx = ctx.client_ip(ip);
    }
    let store;
    let mut keys = StaticKeys::new();
    let key;
    let result = match (&args.key_file, &args.db) {
        (Some(path), _) => {
            key = read_key_file(path)?;
            match token.tessera_identifier() {
                // A Tessera token: the key file holds the kid's secret.
                Some(id) => {
                    keys.insert(id.kid, key.clone());
                    let mut v = Verifier::with_keys(&keys);
                    for s in &args.satisfy {
                        v = v.satisfy_exact(s.clone());
                    }
                    v.verify(&token, &discharges, &ctx).map(|v| v.restrictions())
                }
                None => {
                    let mut v = Verifier::new();
                    for s in &args.satisfy {
                        v = v.satisfy_exact(s.clone());
                    }
                    v.verify_with_key(&token, &key, &discharges, &ctx).map(|v| v.restrictions())
                }
            }
        }
        (None, Some(db)) => {
            store = db_of(db, args.master_key_file.clone()).open()?;
            let mut v = Verifier::with_keys(&store);
            for s in &args.satisfy {
                v = v.satisfy_exact(s.clone());
            }
            v.verify(&token, &discharges, &ctx).map(|v| v.restrictions())
        }
        (None, None) => bail!("give --key-file, --db or --server"),
    };
    match result {
        Ok(r) => {
            let list = |v: &Option<Vec<String>>| v.as_ref().map_or("any".to_owned(), |v| v.join(", "));
            println!("allowed");
            if let Some(sub) = &r.subject {
                println!("subject:    {sub}");
            }
            if let Some(tid) = &r.tid {
                println!("token id:   {tid}");
            }
            if let Some(c) = &r.claims {
                println!("claims:     {}", c.to_json());
            }
            println!("operations: {}", list(&r.operations));
            println!("resources:  {}", list(&r.resources));
            let nets = r.networks.map(|n| n.iter().map(ToString::to_string).collect::<Vec<_>>());
            println!("client ips: {}", list(&nets));
            println!(
                "expires:    {}",
                r.expires.map_or("never".into(), |t| narrow::rfc3339(t).unwrap_or_default())
            );
            Ok(Ok(()))
        }
        Err(e) => Ok(Err(Denied(e.to_string()))),
    }
}

fn mint(args: MintArgs) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let caveats = args.narrow.caveats(now)?;
    if let Some(path) = &args.key_file {
        let key = read_key_file(path)?;
        let id = match args.id {
            Some(id) => id,
            None => TokenId::generate().map_err(|e| anyhow!("{e}"))?.to_string(),
        };
        let mut t = Token::mint(args.location.as_deref(), &key, id.as_bytes()).map_err(|e| anyhow!("{e}"))?;
        for c in &caveats {
            t = t.attenuate(c).map_err(|e| anyhow!("{e}"))?;
        }
        println!("{}", t.encode());
        return Ok(());
    }
    let (Some(db), Some(subject)) = (&args.db, args.subject) else {
        bail!("give --key-file, or --db with --subject")
    };
    let claims = match &args.claims {
        Some(text) => Some(CustomClaims::from_json(text).map_err(|e| anyhow!("--claims: {e}"))?),
        None => None,
    };
    let store = db_of(db, args.master_key_file).open()?;
    let spec = MintSpec {
        subject,
        description: args.description,
        caveats,
        expires: None,
        revocable: false,
        parent: None,
        claims,
    };
    let actor = audit::local_actor("mint");
    let minted = tessera_server::mint(&store, &actor, args.location.as_deref().unwrap_or(""), "", spec)
        .map_err(|e| anyhow!("{e}"))?;
    println!("{}", minted.token.encode());
    eprintln!("recorded token {} for {}", minted.record.tid, minted.record.subject);
    Ok(())
}

fn post_json(url: &str, body: &Value) -> Result<Value> {
    post_json_as(url, None, body)
}

/// POST a JSON body, with a bearer token if given; the answer, or an error with its detail.
fn post_json_as(url: &str, bearer: Option<&str>, body: &Value) -> Result<Value> {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut req = agent.post(url).header("Content-Type", "application/json");
    if let Some(b) = bearer {
        req = req.header("Authorization", format!("Bearer {b}"));
    }
    let mut res = req.send(body.to_string()).with_context(|| format!("POST {url}"))?;
    let status = res.status();
    let text = res.body_mut().read_to_string().with_context(|| format!("reading the answer of {url}"))?;
    let v: Value = serde_json::from_str(&text).unwrap_or(json!({"detail": text}));
    if !status.is_success() {
        bail!("{url} answered {status}: {}", v["detail"].as_str().unwrap_or("(no detail)"));
    }
    Ok(v)
}

fn discharge(token: Token, server: Option<String>) -> Result<()> {
    let mut found = 0;
    for c in token.caveats() {
        let Caveat::ThirdParty { location, id, .. } = c else { continue };
        let url = match &server {
            Some(s) if location.ends_with("/v1/discharge") => {
                format!("{}/v1/discharge", s.trim_end_matches('/'))
            }
            Some(_) => {
                eprintln!("skipping third-party caveat at {location}: not a Tessera discharge endpoint");
                continue;
            }
            None => location.to_owned(),
        };
        let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        let answer = post_json(&url, &json!({"ticket": ticket}))?;
        let d = answer["discharge"].as_str().ok_or_else(|| anyhow!("{url} sent no discharge"))?;
        let d = Token::decode(d).map_err(|e| anyhow!("discharge from {url}: {e}"))?;
        println!("{}", token.bind(&d).encode());
        found += 1;
    }
    if found == 0 {
        bail!("the token has no third-party caveat to discharge");
    }
    Ok(())
}

fn when(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| narrow::rfc3339(t).ok())
        .unwrap_or_else(|| t.to_string())
}
