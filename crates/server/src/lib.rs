//! Tessera HTTP service on actix-web: mint, verify, discharge, revoke, list, key rotation, JWT
//! exchange, revocation feed, health and metrics.
//!
//! [`app`] builds the application for a shared [`AppState`], so tests run it in-process;
//! [`run`] serves it until SIGINT/SIGTERM (in-flight requests finish first).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod api;
mod apps;
mod auth;
mod config;
mod conn;
mod exchange;
#[doc(hidden)]
pub mod fuzzing;
pub mod housekeeping;
mod jwt;
mod limit;
mod links;
mod metrics;
mod mint;
mod problem;
mod sessions;
mod ticket;
mod ui;
mod uses;
mod verify;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::{web, App, HttpServer, ResponseError};
use base64::Engine as _;
use tessera_core::envelope::Algorithm;
use tessera_store::{Freshness, Location, MasterKey, PostgresOptions, Store};

pub use auth::{client_ip, DISCHARGE_HEADER};
pub use config::{Config, DatabaseUrl, ForwardedHeader, JwtAlg};
pub use conn::ConnectionCap;
pub use limit::RateLimiter;
pub use metrics::{Counter, Metrics};
pub use mint::{mint, MintSpec, Minted};
pub use problem::ApiError;

/// Every route served: (method, path). The OpenAPI document must list exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("post", "/v1/tokens"),
    ("get", "/v1/tokens"),
    ("post", "/v1/tokens/{tid}/revoke"),
    ("post", "/v1/verify"),
    ("post", "/v1/discharge"),
    ("post", "/v1/jwt"),
    ("get", "/v1/keys"),
    ("post", "/v1/keys/rotate"),
    ("get", "/v1/keys/{kid}/envelope-key"),
    ("post", "/v1/keys/{kid}/revoke"),
    ("get", "/v1/revocations"),
    ("get", "/.well-known/jwks.json"),
    ("get", "/.well-known/openid-configuration"),
    ("post", "/v1/keys/signing/rotate"),
    ("post", "/v1/apps"),
    ("get", "/v1/apps"),
    ("get", "/v1/apps/{name}"),
    ("delete", "/v1/apps/{name}"),
    ("get", "/v1/apps/{name}/jwks.json"),
    ("post", "/v1/sessions"),
    ("post", "/v1/sessions/refresh"),
    ("post", "/v1/sessions/{sid}/revoke"),
    ("post", "/v1/exchange"),
    ("post", "/v1/links"),
    ("post", "/v1/links/redeem"),
    ("get", "/v1/whoami"),
];

/// The token page's routes (not API: they serve the page built into the binary).
pub const PAGE_ROUTES: &[&str] = &["/", "/ui/", "/ui/app.js", "/ui/style.css", "/favicon.ico"];

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

/// Shared state of the service.
#[derive(Debug)]
pub struct AppState {
    /// The key store.
    pub store: Store,
    /// The configuration.
    pub config: Config,
    /// Counters.
    pub metrics: Metrics,
    /// Per-client rate limiter.
    pub limiter: RateLimiter,
    /// Location written into minted tokens (the public URL).
    pub location: String,
    /// Location of the discharge endpoint (in revocable tokens).
    pub discharge_location: String,
    /// `iss` of envelopes.
    pub issuer: String,
    /// Trusted issuers of the login exchange (`--exchange-config`).
    pub exchange: Option<exchange::Exchange>,
    /// The expiry-notice webhook (`--notify-webhook`).
    pub notifier: Option<housekeeping::Notifier>,
    /// Token texts `/v1/verify` has verified, so the same token again skips its signature chain
    /// (keyed to the store's key generation: any key change makes every entry a miss).
    pub memo: tessera_core::SignatureMemo,
}

/// The state, and the admin token when this start created the first key.
pub struct Opened {
    /// Shared state.
    pub state: web::Data<AppState>,
    /// The admin token, shown once.
    pub admin_token: Option<String>,
}

impl AppState {
    /// Open the store (creating master key and database on first start). On first start, create
    /// the first root key and an admin token.
    pub fn open(config: Config) -> Result<Opened, Error> {
        let freshness = Freshness { max_staleness: config.max_staleness };
        let store = match &config.database_url {
            None => {
                let (master, _) = MasterKey::for_database(&config.master_key_path(), &config.db_path())?;
                Store::open_at(&Location::File(config.db_path()), master, freshness)?
            }
            Some(url) => {
                let (master, _) = MasterKey::from_env_or_file(&config.master_key_path())?;
                let location =
                    Location::Postgres { url: url.expose().to_owned(), options: PostgresOptions::default() };
                Store::open_at(&location, master, freshness)?
            }
        };
        let exchange = match &config.exchange_config {
            None => None,
            Some(path) => Some(exchange::Exchange::load(path, config.max_ttl).map_err(Error::Config)?),
        };
        let notifier = housekeeping::Notifier::load(&config).map_err(Error::Config)?;
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
            store,
            config,
        };
        // On a cluster, exactly one of the nodes starting on an empty database creates the
        // first key; that node prints the admin token.
        let admin_token = match state.store.create_first_key()? {
            Some(_) => Some(mint_admin_token(&state.store, &state.location, &state.config.admin_subject)?),
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
/// Used on first start, and by `tessera admin-token` to replace a lost one.
pub fn mint_admin_token(store: &Store, location: &str, admin_subject: &str) -> Result<String, Error> {
    let spec = MintSpec {
        subject: admin_subject.to_owned(),
        description: "admin token".into(),
        caveats: Vec::new(),
        expires: None,
        revocable: false,
        parent: None,
        claims: None,
    };
    let minted = mint(store, location, "", spec).map_err(|e| Error::Mint(e.to_string()))?;
    Ok(minted.token.encode())
}

pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let t = text.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).ok()
}

fn json_error(err: JsonPayloadError) -> actix_web::Error {
    let e = match &err {
        JsonPayloadError::OverflowKnownLength { length, limit } => {
            ApiError::too_large(format!("body of {length} bytes is over the limit of {limit}"))
        }
        JsonPayloadError::Overflow { limit } => {
            ApiError::too_large(format!("body is over the limit of {limit} bytes"))
        }
        JsonPayloadError::ContentType => ApiError::unsupported_media(),
        JsonPayloadError::Payload(p) if conn::is_body_timeout(p) => ApiError::body_timeout(),
        JsonPayloadError::Deserialize(e) => ApiError::bad_request(format!("invalid JSON body: {e}")),
        other => ApiError::bad_request(other.to_string()),
    };
    e.into()
}

fn query_error(err: QueryPayloadError) -> actix_web::Error {
    ApiError::bad_request(format!("invalid query: {err}")).into()
}

async fn not_found() -> actix_web::HttpResponse {
    ApiError::not_found("no such endpoint; see docs/API.md").error_response()
}

async fn method_not_allowed() -> actix_web::HttpResponse {
    ApiError::method_not_allowed().error_response()
}

/// Paths the rate limiter does not count (compared with the raw path, so a percent-encoded
/// spelling of these is counted like any other request).
const UNLIMITED: &[&str] =
    &["/health", "/metrics", "/.well-known/jwks.json", "/.well-known/openid-configuration"];

/// Rate limiting (every path but [`UNLIMITED`], whatever it routes to), response counting and the
/// budget headers of management calls, or their give-back when the answer is not a success
/// (`uses::settle`), around every request.
async fn guard(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    // HEAD is served wherever GET is (RFC 9110): routed as GET; the connection still knows the
    // request was HEAD and sends the headers without the body.
    if req.method() == actix_web::http::Method::HEAD {
        req.head_mut().method = actix_web::http::Method::GET;
    }
    if let Some(state) = &state {
        // The limiter runs before routing, which decodes percent-escapes (`/%761/verify` is
        // served as `/v1/verify`): so it counts every path except the exact unlimited ones.
        let refused = if UNLIMITED.contains(&req.path()) {
            None
        } else {
            match auth::client_ip_of(state, req.request()) {
                Err(e) => Some(e),
                Ok(Some(ip)) if !state.limiter.allow(ip) => Some(ApiError::rate_limited()),
                Ok(_) => None,
            }
        };
        if let Some(e) = refused {
            state.metrics.observe(e.status().as_u16());
            return Ok(req.into_response(e.error_response()));
        }
        conn::body_deadline(&mut req, state.config.body_timeout);
    }
    // A refused request whose body was not read to its end (an early error, one that missed
    // `--body-timeout`) ends its connection: actix would otherwise drain a chunked body for as
    // long as the client trickles it.
    let connection = req.conn_data::<std::rc::Rc<conn::Connection>>().cloned();
    let has_body = req.headers().contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || req.headers().get(actix_web::http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    let mut res = problem::as_problem(next.call(req).await?.map_into_boxed_body());
    if has_body && (res.status().is_client_error() || res.status().is_server_error()) {
        res.response_mut().head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        if let Some(c) = connection {
            c.stop_reading();
        }
    }
    uses::settle(&mut res).await;
    if let Some(state) = state {
        state.metrics.observe(res.status().as_u16());
    }
    Ok(res)
}

/// The application: routes, limits, error shapes, rate limiting and metrics.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = state.config.body_limit;
    let resource = |path: &str| web::resource(path.to_owned()).default_service(web::to(method_not_allowed));
    App::new()
        .app_data(state)
        .app_data(web::JsonConfig::default().limit(limit).error_handler(|e, _| json_error(e)))
        .app_data(web::QueryConfig::default().error_handler(|e, _| query_error(e)))
        .app_data(web::PayloadConfig::default().limit(limit))
        .app_data(web::FormConfig::default().limit(limit))
        .wrap(actix_web::middleware::from_fn(guard))
        // The hot path first: static routes before templated ones (which match by regex).
        .service(resource("/v1/verify").route(web::post().to(verify::verify)))
        .service(resource("/health").route(web::get().to(api::health)))
        .service(resource("/metrics").route(web::get().to(api::metrics)))
        .service(
            resource("/v1/tokens")
                .route(web::post().to(api::mint_token))
                .route(web::get().to(api::list_tokens)),
        )
        .service(resource("/v1/tokens/{tid}/revoke").route(web::post().to(api::revoke_token)))
        .service(resource("/v1/discharge").route(web::post().to(api::discharge)))
        .service(resource("/v1/jwt").route(web::post().to(jwt::envelope)))
        .service(resource("/v1/keys").route(web::get().to(api::list_keys)))
        .service(resource("/v1/keys/rotate").route(web::post().to(api::rotate_keys)))
        .service(resource("/v1/keys/{kid}/envelope-key").route(web::get().to(api::envelope_key)))
        .service(resource("/v1/keys/{kid}/revoke").route(web::post().to(api::revoke_key)))
        .service(resource("/v1/revocations").route(web::get().to(api::revocations)))
        .service(resource("/.well-known/jwks.json").route(web::get().to(jwt::jwks)))
        .service(resource("/.well-known/openid-configuration").route(web::get().to(jwt::discovery)))
        .service(resource("/v1/keys/signing/rotate").route(web::post().to(jwt::rotate)))
        .service(resource("/v1/apps").route(web::post().to(apps::register)).route(web::get().to(apps::list)))
        .service(
            resource("/v1/apps/{name}")
                .route(web::get().to(apps::show))
                .route(web::delete().to(apps::disable)),
        )
        .service(resource("/v1/apps/{name}/jwks.json").route(web::get().to(apps::jwks)))
        .service(resource("/v1/sessions").route(web::post().to(sessions::create)))
        .service(resource("/v1/sessions/refresh").route(web::post().to(sessions::refresh)))
        .service(resource("/v1/sessions/{sid}/revoke").route(web::post().to(sessions::revoke)))
        .service(resource("/v1/exchange").route(web::post().to(exchange::exchange)))
        .service(resource("/v1/links").route(web::post().to(links::create)))
        .service(resource("/v1/links/redeem").route(web::post().to(links::redeem)))
        .service(resource("/v1/whoami").route(web::get().to(ui::whoami)))
        .service(resource("/").route(web::get().to(ui::root)))
        .service(resource("/ui/").route(web::get().to(ui::index)))
        .service(resource("/ui/app.js").route(web::get().to(ui::script)))
        .service(resource("/ui/style.css").route(web::get().to(ui::style)))
        .service(resource("/favicon.ico").route(web::get().to(ui::favicon)))
        .default_service(web::to(not_found))
}

/// Serve until SIGINT/SIGTERM. Prints the admin token on first start (once), and the bound
/// address as `tessera listening on http://ADDR` (so `--listen 127.0.0.1:0` can be used).
pub fn run(mut config: Config) -> Result<(), Error> {
    let listener = std::net::TcpListener::bind(&config.listen)?;
    let addr: SocketAddr = listener.local_addr()?;
    if config.public_url.is_none() {
        config.public_url = Some(format!("http://{addr}"));
    }
    let workers =
        config.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    eprintln!(
        "tessera: config: listen={addr} data_dir={} database={} max_staleness={} master_key={} public_url={} issuer={} admin_subject={} \
         default_ttl={} max_ttl={} discharge_ttl={} jwt_ttl={} rate_limit={}/s body_limit={} trusted_proxies={:?} \
         forwarded_header={} workers={workers}",
        config.data_dir.display(),
        config.database_display(),
        config::show_duration(config.max_staleness),
        if std::env::var_os(tessera_store::MASTER_KEY_ENV).is_some() {
            "(from TESSERA_MASTER_KEY)".to_owned()
        } else {
            config.master_key_path().display().to_string()
        },
        config.public_url(),
        config.issuer(),
        config.admin_subject,
        config::show_duration(config.default_ttl),
        config::show_duration(config.max_ttl),
        config::show_duration(config.discharge_ttl),
        config::show_duration(config.jwt_ttl),
        config.rate_limit,
        config.body_limit,
        config.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        config.forwarded_header.name(),
    );
    let admin_file = config.admin_token_file.clone();
    let opened = AppState::open(config)?;
    if let Some(token) = &opened.admin_token {
        println!("Tessera admin token (shown once; keep it secret):\n{token}");
        if let Some(path) = admin_file {
            write_private(&path, token)?;
            println!("(also written to {})", path.display());
        }
    }
    println!("tessera listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let state = opened.state;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let housekeeper = housekeeping::spawn(state.clone(), stop.clone());
    let cap =
        ConnectionCap::new(state.config.max_connections_per_address, state.config.trusted_proxies.clone());
    let head_timeout = state.config.head_timeout;
    let served = actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || app(state.clone()))
            .on_connect(move |io, ext| cap.on_connect(io, ext))
            .client_request_timeout(head_timeout)
            .client_disconnect_timeout(std::time::Duration::from_secs(1))
            .workers(workers)
            .shutdown_timeout(30)
            .listen(listener)?
            .run()
            .await
    });
    // The last uses noted in memory are written before the process ends.
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = housekeeper.join();
    served?;
    eprintln!("tessera: stopped");
    Ok(())
}

/// Write a secret to a file readable by its owner only: created with mode 0600, and an existing
/// file is set to 0600 before the secret is written into it (a mode given at creation does not
/// apply to a file that already exists).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Security review finding 7: an existing world-readable file was left 0644.
    #[cfg(unix)]
    #[test]
    fn admin_token_file_is_private_even_when_it_existed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "secret-token").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret-token\n");
        let fresh = dir.path().join("new.token");
        write_private(&fresh, "t").unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
