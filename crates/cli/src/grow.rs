//! Growing and keeping a deployment: `tessera migrate` (the embedded file to PostgreSQL and
//! back), `tessera backup` (a snapshot of a running node), `tessera restore` (put one back,
//! service stopped) and `tessera revocations replay` (re-apply a newer source's revocations).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use tessera_core::{KeyId, TokenId};
use tessera_store::{Location, MasterKey, PostgresOptions, Progress};

use crate::{read_arg, Db};

/// `tessera migrate`.
#[derive(clap::Args)]
pub(crate) struct MigrateArgs {
    /// The source: `--db FILE` (default) or `--database URL`, and its master key.
    #[command(flatten)]
    pub(crate) from: Db,
    /// The target: a PostgreSQL URL (`postgres://...`) or a new embedded database file whose
    /// name ends in `.redb` (anything else is refused, not printed). It must hold no data; its
    /// schema is created if it has none.
    #[arg(long, env = "TESSERA_MIGRATE_TO", hide_env_values = true)]
    pub(crate) to: String,
}

/// `tessera backup`.
#[derive(clap::Args)]
pub(crate) struct BackupArgs {
    /// Base URL of the running node.
    #[arg(long, env = "TESSERA_SERVER")]
    server: String,
    /// An admin token (`-`: read standard input).
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: String,
    /// Where to write the snapshot (must not exist).
    #[arg(long)]
    out: PathBuf,
}

/// `tessera restore`.
#[derive(clap::Args)]
pub(crate) struct RestoreArgs {
    /// The snapshot (from `tessera backup`).
    #[arg(long)]
    from: PathBuf,
    /// The database to put it back as (its master key: `master.key` beside it, or
    /// TESSERA_MASTER_KEY / --master-key-file). The service must be stopped.
    #[command(flatten)]
    db: Db,
}

/// `tessera revocations`.
#[derive(clap::Subcommand)]
pub(crate) enum RevocationsAction {
    /// Apply the token and key revocations a running source numbered after `--after` to a local
    /// database (after a restore: the revocations made since the snapshot).
    Replay {
        /// Base URL of the source (its public `GET /v1/revocations` feed).
        #[arg(long)]
        from: String,
        /// The last change number the target already has (`tessera restore` prints it).
        #[arg(long)]
        after: u64,
        #[command(flatten)]
        db: Db,
    },
}

/// The migration's target: a PostgreSQL URL or a path ending in `.redb`. Anything else (a
/// key=value connection string, which may hold a password) is refused without being repeated.
fn location_of(target: &str) -> Result<Location> {
    if target.starts_with("postgres://") || target.starts_with("postgresql://") {
        Ok(Location::Postgres { url: target.to_owned(), options: PostgresOptions::default() })
    } else if target.ends_with(".redb") {
        Ok(Location::File(PathBuf::from(target)))
    } else {
        bail!("--to must be a postgres:// or postgresql:// URL or a path ending in .redb")
    }
}

/// What the progress looks like: one updated line on a terminal, a line per table otherwise.
struct Printer {
    terminal: bool,
    last: Option<&'static str>,
}

impl Printer {
    fn show(&mut self, p: Progress) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{:<13} {:>9} / {}", p.table, p.done, p.total);
            if p.done == p.total {
                let _ = writeln!(err);
            }
        } else if p.done == p.total && self.last != Some(p.table) {
            let _ = writeln!(err, "{:<13} {:>9}", p.table, p.total);
            self.last = Some(p.table);
        }
    }
}

pub(crate) fn migrate(args: MigrateArgs) -> Result<()> {
    let (source, master) = args.from.location()?;
    let target = location_of(&args.to)?;
    let redacted = |s: String| match &args.from.database {
        Some(url) => s.replace(url.expose(), &url.redacted()),
        None => s,
    };
    let shown = match &target {
        Location::File(p) => p.display().to_string(),
        Location::Postgres { .. } => "the PostgreSQL database".into(),
    };
    eprintln!("migrating to {shown} (one transaction: a failure leaves the target empty)");
    let mut printer = Printer { terminal: std::io::stderr().is_terminal(), last: None };
    let started = std::time::Instant::now();
    let done = tessera_store::migrate(&source, &target, &master, &mut |p| printer.show(p))
        .map_err(|e| anyhow::anyhow!("{}", redacted(e.to_string()).replace(&args.to, &shown)))?;
    let rows: u64 = done.tables.iter().map(|(_, n)| n).sum();
    println!(
        "migrated {rows} rows in {:.1} s; the revocation feed continues after {}",
        started.elapsed().as_secs_f64(),
        done.last_change
    );
    println!("not copied: rate-limit counters (budgets start a new window on the target)");
    Ok(())
}

pub(crate) fn backup(args: BackupArgs) -> Result<()> {
    if args.out.exists() {
        bail!("{} exists: choose a new file", args.out.display());
    }
    let token = read_arg(Some(args.token))?;
    let url = format!("{}/v1/backup", args.server.trim_end_matches('/'));
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut res = agent
        .post(&url)
        .header("Authorization", format!("Bearer {}", token.trim()))
        .send_empty()
        .with_context(|| format!("POST {url}"))?;
    let status = res.status();
    if !status.is_success() {
        let text = res.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        bail!("{url} answered {status}: {}", v["detail"].as_str().unwrap_or(&text));
    }
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let last = header("Tessera-Last-Change").unwrap_or_else(|| "?".into());
    let length: Option<u64> = header("Content-Length").and_then(|v| v.parse().ok());
    let partial = with_suffix(&args.out, ".partial");
    let written = (|| -> Result<u64> {
        let mut out = private_file(&partial)?;
        let n = std::io::copy(&mut res.body_mut().with_config().limit(u64::MAX).reader(), &mut out)?;
        out.sync_all()?;
        Ok(n)
    })();
    let written = match written {
        Ok(n) if length.is_none_or(|l| l == n) => n,
        Ok(n) => {
            let _ = std::fs::remove_file(&partial);
            bail!("the snapshot arrived cut short ({n} of {} bytes): nothing written", length.unwrap_or(0));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context("receiving the snapshot"));
        }
    };
    std::fs::rename(&partial, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("backup: {} ({written} bytes), holds the change log up to {last}", args.out.display());
    Ok(())
}

pub(crate) fn restore(args: RestoreArgs) -> Result<()> {
    if args.db.database.is_some() {
        bail!("restore puts a snapshot back as an embedded database (--db); a PostgreSQL store is restored with its own tools");
    }
    let (_, master) = args.db.location()?;
    let done = tessera_store::restore(&args.from, &args.db.db, &master)?;
    println!("restored {} ({} bytes) from {}", done.path.display(), done.bytes, args.from.display());
    eprintln!(
        "warning: the snapshot holds the change log up to {last}. Revocations made after it (on the node \
         that went on serving) are not in it: tokens and keys revoked since would verify again. Re-apply \
         them from a source that has them, before starting the service:\n  \
         tessera revocations replay --from https://NODE --after {last} --db {}",
        done.path.display(),
        last = done.last_change,
    );
    Ok(())
}

pub(crate) fn revocations(action: RevocationsAction) -> Result<()> {
    let RevocationsAction::Replay { from, after, db } = action;
    let store = db.open()?;
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let base = from.trim_end_matches('/');
    let (mut seq, mut tokens, mut keys, mut unknown) = (after, 0u64, 0u64, 0u64);
    loop {
        let url = format!("{base}/v1/revocations?after={seq}&limit=1000");
        let mut res = agent.get(&url).call().with_context(|| format!("GET {url}"))?;
        let status = res.status();
        let text = res.body_mut().read_to_string().with_context(|| format!("reading {url}"))?;
        if !status.is_success() {
            bail!("{url} answered {status}: {text}");
        }
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{url}: not JSON"))?;
        let entries = v["revocations"].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            break;
        }
        for e in &entries {
            let (Some(kind), Some(id), Some(n)) = (e["kind"].as_str(), e["id"].as_str(), e["seq"].as_u64())
            else {
                bail!("{url}: an entry without kind, id and seq: {e}");
            };
            if n <= seq {
                bail!("{url}: entries out of order ({n} after {seq})");
            }
            let applied = match kind {
                "token" => {
                    let tid: TokenId = id.parse().with_context(|| format!("entry {n}: token id"))?;
                    ok_unless_unknown(store.revoke_token(tid).map(|_| ()))?
                }
                "key" => {
                    let kid: KeyId = id.parse().with_context(|| format!("entry {n}: key id"))?;
                    ok_unless_unknown(store.revoke_key(kid).map(|_| ()))?
                }
                other => bail!("entry {n}: unknown kind {other}"),
            };
            match (applied, kind) {
                (false, _) => unknown += 1,
                (true, "token") => tokens += 1,
                (true, _) => keys += 1,
            }
            seq = n;
        }
    }
    println!(
        "replayed the revocations of {base} after {after} up to {seq}: {tokens} token families, {keys} keys \
         revoked here; {unknown} unknown here (minted after the snapshot: nothing to revoke)"
    );
    Ok(())
}

/// `Ok(true)` applied, `Ok(false)` the target has no such token or key.
fn ok_unless_unknown(r: tessera_store::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(tessera_store::Error::UnknownToken(_) | tessera_store::Error::UnknownKey(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// A new file readable by its owner only (a snapshot holds every record and sealed secret).
fn private_file(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).with_context(|| format!("creating {}", path.display()))
}

impl Db {
    /// Where the database is and its master key, without opening it.
    pub(crate) fn location(&self) -> Result<(Location, MasterKey)> {
        let key_path = self.key_path()?;
        let (master, _) = MasterKey::from_env_or_file(&key_path)?;
        let location = match &self.database {
            Some(url) => {
                Location::Postgres { url: url.expose().to_owned(), options: PostgresOptions::default() }
            }
            None => Location::File(self.db.clone()),
        };
        Ok((location, master))
    }
}

#[cfg(test)]
mod tests {
    /// Review of issue 24, F7: `--to 'host=db password=…'` was taken as a file path and printed.
    #[test]
    fn a_target_that_is_neither_a_url_nor_a_redb_path_is_refused_unprinted() {
        let Err(err) = super::location_of("host=db user=t password=hunter2") else {
            panic!("a key=value connection string was accepted as a target")
        };
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(super::location_of("./data/new.redb").is_ok());
        assert!(super::location_of("postgres://u:p@h/db").is_ok());
    }
}
