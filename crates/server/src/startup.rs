//! Opening the state on start: the store (master key and database created on first start), the
//! trusted issuers, the webhook, and on first start the first root key and the admin token.

use actix_web::web;
use tessera_core::envelope::Algorithm;
use tessera_store::{
    Actor, AuditKind, AuditNote, Freshness, Location, MasterKey, Outcome, PostgresOptions, Store, Target,
};

use crate::config::Config;
use crate::exchange;
use crate::http::limit::RateLimiter;
use crate::http::metrics::Metrics;
use crate::mint::{mint, MintSpec};
use crate::notifier::Notifier;
use crate::state::AppState;

/// Errors that stop the service from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key store refused to open or failed.
    #[error(transparent)]
    Store(#[from] tessera_store::Error),
    /// Minting the first admin token failed.
    #[error("could not mint the admin token: {0}")]
    Mint(String),
    /// A configuration file is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The state, and the admin token when this start created the first key.
pub struct Opened {
    /// Shared state.
    pub state: web::Data<AppState>,
    /// The admin token, shown once.
    pub admin_token: Option<String>,
}

impl AppState {
    /// Open the store (creating master key and database on first start) and, on the embedded
    /// database, remove the snapshot files a backup cut short left in the data directory. On
    /// first start, create the first root key and an admin token.
    pub fn open(config: Config) -> Result<Opened, Error> {
        let freshness = Freshness { max_staleness: config.max_staleness };
        let store = match &config.database_url {
            None => {
                let (master, _) = MasterKey::for_database(&config.master_key_path(), &config.db_path())?;
                Store::open_at(&Location::File(config.db_path()), master, freshness)?
            }
            Some(url) => {
                let (master, _) = MasterKey::from_env_or_file(&config.master_key_path())?;
                let options = PostgresOptions {
                    sslmode: config.database_sslmode,
                    ca_file: config.database_ca.clone(),
                    ..PostgresOptions::default()
                };
                let location = Location::Postgres { url: url.expose().to_owned(), options };
                Store::open_at(&location, master, freshness)?
            }
        };
        if !store.is_shared() {
            // What a backup cut short by a crash left beside the database (the names
            // `POST /v1/backup` writes, nothing else): no backup can be running now, the
            // database's lock is ours.
            match tessera_store::remove_stale_snapshots(&config.data_dir) {
                Ok(removed) => {
                    for path in removed {
                        tracing::warn!(path = %path.display(), "removed a backup file left by an earlier run");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not remove the backup files left by an earlier run")
                }
            }
        }
        let exchange = match &config.exchange_config {
            None => None,
            Some(path) => Some(exchange::Exchange::load(path, config.max_ttl).map_err(Error::Config)?),
        };
        let notifier = Notifier::load(&config).map_err(Error::Config)?;
        let location = config.public_url();
        let state = AppState {
            exchange,
            notifier,
            discharge_location: format!("{location}/v1/discharge"),
            issuer: config.issuer(),
            location,
            limiter: RateLimiter::new(config.rate_limit),
            metrics: Metrics::default(),
            // 512 bytes of text per entry on average before it starts over (tokens are ~250).
            memo: tessera_core::SignatureMemo::new(
                config.verify_memo,
                config.verify_memo.saturating_mul(512),
            ),
            streams: crate::feed::Streams::new(crate::feed::Settings {
                max_streams: config.max_streams,
                max_per_address: config.max_streams_per_address,
                heartbeat: config.stream_heartbeat,
                buffer: config.stream_buffer,
                replay_limit: config.stream_replay_limit,
            }),
            store,
            config,
        };
        // On a cluster, exactly one of the nodes starting on an empty database creates the
        // first key; that node prints the admin token.
        let admin_token = match state.store.create_first_key()? {
            Some(_) => Some(mint_admin_token(
                &state.store,
                &Actor::system(),
                &state.location,
                &state.config.admin_subject,
            )?),
            None => None,
        };
        // Public-key envelope keys: one active and one published ahead, per algorithm (no-ops
        // once they exist).
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            state.store.ensure_signing_keys(alg)?;
        }
        Ok(Opened { state: web::Data::new(state), admin_token })
    }
}

/// Mint (and record) an admin token: subject = the admin subject, no caveats, no expiry.
/// Used on first start, and by `tessera admin-token` to replace a lost one. The record's
/// `token.mint` entry names `actor` (the service itself, or the local administrator) in the same
/// transaction; an `admin_token.create` entry follows it through the writer's queue.
pub fn mint_admin_token(
    store: &Store,
    actor: &Actor,
    location: &str,
    admin_subject: &str,
) -> Result<String, Error> {
    let spec = MintSpec {
        subject: admin_subject.to_owned(),
        description: "admin token".into(),
        caveats: Vec::new(),
        expires: None,
        revocable: false,
        parent: None,
        claims: None,
    };
    let minted = mint(store, actor, location, "", spec).map_err(|e| Error::Mint(e.to_string()))?;
    store.audit_note(AuditNote {
        kind: AuditKind::AdminTokenCreate,
        outcome: Outcome::Success,
        actor: actor.clone(),
        target: Target { tid: Some(minted.record.tid), ..Target::default() },
        reason: None,
        detail: None,
    });
    Ok(minted.token.encode())
}
