//! The assembly: the actix [`App`] with every route ([`app`]), and the server with its
//! background housekeeping ([`run`]). Nothing in the crate imports from here.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpServer};

use crate::config::{self, Config};
use crate::housekeeping;
use crate::http::conn::ConnectionCap;
use crate::http::problem::{json_error, method_not_allowed, not_found, query_error};
use crate::http::request_id;
use crate::listener::{self, TrustedProxy};
use crate::routes::{
    apps, audit, authz, backup, discharge, envelopes, exchange, health, keys, links, revocations, sessions,
    tokens, ui, verify,
};
use crate::startup::Error;
use crate::state::AppState;

/// Every route served: (method, path). The OpenAPI document must list exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("post", "/v1/tokens"),
    ("get", "/v1/tokens"),
    ("post", "/v1/tokens/{tid}/revoke"),
    ("post", "/v1/verify"),
    ("get", "/v1/authz/nginx"),
    ("get", "/v1/authz/forward"),
    ("get", "/v1/authz/envoy"),
    ("post", "/v1/discharge"),
    ("post", "/v1/jwt"),
    ("get", "/v1/keys"),
    ("post", "/v1/keys/rotate"),
    ("get", "/v1/keys/{kid}/envelope-key"),
    ("post", "/v1/keys/{kid}/revoke"),
    ("get", "/v1/revocations"),
    ("get", "/v1/revocations/stream"),
    ("post", "/v1/backup"),
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
    ("get", "/v1/audit"),
    ("get", "/v1/audit/mine"),
    ("get", "/v1/audit/head"),
];

/// The token page's routes (not API: they serve the page built into the binary).
pub const PAGE_ROUTES: &[&str] =
    &["/", "/ui/", "/ui/app.js", "/ui/activity.js", "/ui/style.css", "/favicon.ico"];

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
    // Each resource is named by its template: the access log and the latency histogram read it
    // without matching the path again.
    let resource =
        |path: &str| web::resource(path.to_owned()).name(path).default_service(web::to(method_not_allowed));
    App::new()
        .app_data(state)
        .app_data(web::JsonConfig::default().limit(limit).error_handler(|e, _| json_error(e)))
        .app_data(web::QueryConfig::default().error_handler(|e, _| query_error(e)))
        .app_data(web::PayloadConfig::default().limit(limit))
        .app_data(web::FormConfig::default().limit(limit))
        // The one middleware: the request id, then the guard (`http/guard`, which `observe`
        // calls itself: one layer less per request), so the id exists before the guard runs and
        // every answer, the guard's refusals included, carries it and is logged and timed.
        .wrap(actix_web::middleware::from_fn(request_id::observe))
        // The hot path first: static routes before templated ones (which match by regex).
        .service(resource("/v1/verify").route(web::post().to(verify::verify)))
        // Forward auth answers every method: proxies call with the original request's.
        .service(resource("/v1/authz/nginx").route(web::route().to(authz::nginx)))
        .service(resource("/v1/authz/forward").route(web::route().to(authz::forward)))
        .service(resource("/v1/authz/envoy").route(web::route().to(authz::envoy)))
        .service(resource("/v1/authz/envoy/{path:.*}").route(web::route().to(authz::envoy)))
        .service(resource("/health").route(web::get().to(health::health)))
        .service(resource("/metrics").route(web::get().to(health::metrics)))
        .service(
            resource("/v1/tokens")
                .route(web::post().to(tokens::mint_token))
                .route(web::get().to(tokens::list_tokens)),
        )
        .service(resource("/v1/tokens/{tid}/revoke").route(web::post().to(tokens::revoke_token)))
        .service(resource("/v1/discharge").route(web::post().to(discharge::discharge)))
        .service(resource("/v1/jwt").route(web::post().to(envelopes::envelope)))
        .service(resource("/v1/keys").route(web::get().to(keys::list_keys)))
        .service(resource("/v1/keys/rotate").route(web::post().to(keys::rotate_keys)))
        .service(resource("/v1/keys/{kid}/envelope-key").route(web::get().to(keys::envelope_key)))
        .service(resource("/v1/keys/{kid}/revoke").route(web::post().to(keys::revoke_key)))
        .service(resource("/v1/revocations").route(web::get().to(revocations::revocations)))
        .service(resource("/v1/revocations/stream").route(web::get().to(revocations::stream)))
        .service(resource("/v1/backup").route(web::post().to(backup::backup)))
        .service(resource("/.well-known/jwks.json").route(web::get().to(envelopes::jwks)))
        .service(resource("/.well-known/openid-configuration").route(web::get().to(envelopes::discovery)))
        .service(resource("/v1/keys/signing/rotate").route(web::post().to(envelopes::rotate)))
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
        .service(resource("/v1/audit").route(web::get().to(audit::list)))
        .service(resource("/v1/audit/mine").route(web::get().to(audit::mine)))
        .service(resource("/v1/audit/head").route(web::get().to(audit::head)))
        .service(resource("/").route(web::get().to(ui::root)))
        .service(resource("/ui/").route(web::get().to(ui::index)))
        .service(resource("/ui/app.js").route(web::get().to(ui::script)))
        .service(resource("/ui/activity.js").route(web::get().to(ui::activity_script)))
        .service(resource("/ui/style.css").route(web::get().to(ui::style)))
        .service(resource("/favicon.ico").route(web::get().to(ui::favicon)))
        .default_service(web::to(not_found))
}

/// Serve until SIGINT/SIGTERM. Prints the admin token on first start (once), the bound address
/// as `tessera listening on http://ADDR` (so `--listen 127.0.0.1:0` can be used), then the
/// socket as `tessera listening on unix:PATH`, on standard output; logs (`--log-format`,
/// `--log-level`) go to standard error, a failure to start included.
pub fn run(config: Config) -> Result<(), Error> {
    let _logging = crate::logging::init(config.log_format, config.log_level.as_deref());
    let served = serve(config);
    if let Err(e) = &served {
        tracing::error!("{e}");
    }
    served
}

/// TLS handshakes in progress per worker (actix's default is 256).
const TLS_HANDSHAKES_PER_WORKER: usize = 4096;
/// How long a TLS client has to finish its handshake (actix's default is 3 s).
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn serve(mut config: Config) -> Result<(), Error> {
    let (tcp, socket_path) = listener::split(&config.listen).map_err(Error::Config)?;
    check_listeners(&config, tcp.is_some(), socket_path.is_some()).map_err(Error::Config)?;
    let tcp_listener = tcp.map(std::net::TcpListener::bind).transpose()?;
    let addr: Option<SocketAddr> =
        tcp_listener.as_ref().map(std::net::TcpListener::local_addr).transpose()?;
    // Bound before the store is opened, like the TCP address: a path in use stops the start.
    let socket = socket_path
        .map(|p| listener::bind_unix(p, config.listen_mode.unwrap_or(listener::DEFAULT_SOCKET_MODE)))
        .transpose()
        .map_err(Error::Config)?;
    // What is bound (port 0 resolved), for the config line.
    let listening = addr
        .map(|a| a.to_string())
        .into_iter()
        .chain(socket_path.map(|p| format!("unix:{}", p.display())))
        .collect::<Vec<_>>()
        .join(",");
    // Read before the store is opened: a bad certificate or key stops the start, naming the file.
    let tls = crate::tls::from_config(&config).map_err(Error::Config)?;
    let scheme = config.scheme();
    if let (None, Some(addr)) = (&config.public_url, addr) {
        config.public_url = Some(format!("{scheme}://{addr}"));
    }
    let workers =
        config.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    tracing::info!(
        "config: listen={listening} data_dir={} database={} max_staleness={} master_key={} public_url={} issuer={} admin_subject={} \
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
    // The TCP line first, as it always was (scripts and tests read the first such line).
    if let Some(addr) = addr {
        println!("tessera listening on {scheme}://{addr}");
    }
    #[cfg(unix)]
    if let Some(socket) = &socket {
        println!("tessera listening on unix:{}", socket.file.path().display());
    }
    let _ = std::io::stdout().flush();
    let state = opened.state;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let housekeeper = housekeeping::spawn(state.clone(), stop.clone());
    let exempt = state.config.trusted_proxies.iter().filter_map(TrustedProxy::network).collect();
    let socket_trusted = state.config.trusted_proxies.contains(&TrustedProxy::UnixSocket);
    let cap = ConnectionCap::new(state.config.max_connections_per_address, exempt, socket_trusted);
    let head_timeout = state.config.head_timeout;
    let streams = state.streams.clone();
    #[cfg(unix)]
    let (unix_listener, socket_file) = match socket {
        Some(s) => (Some(s.listener), Some(s.file)),
        None => (None, None),
    };
    #[cfg(not(unix))]
    let unix_listener: Option<listener::UnixSocket> = socket;
    let served = actix_web::rt::System::new().block_on(async move {
        actix_web::rt::spawn(streams.close_on_stop_signal());
        let mut server = HttpServer::new(move || app(state.clone()))
            .on_connect(move |io, ext| cap.on_connect(io, ext))
            .client_request_timeout(head_timeout)
            .client_disconnect_timeout(std::time::Duration::from_secs(1))
            // The per-address cap above sees a TLS connection only after its handshake: until
            // then a connection holds one of the worker's handshake places. actix's default (256
            // places, 3 s each) let one address's silent sockets queue every other client behind
            // them; more places and a shorter wait make that take thousands of new connections a
            // second (docs/LIMITS.md: a firewall per-address limit closes it entirely).
            .max_connection_rate(TLS_HANDSHAKES_PER_WORKER)
            .tls_handshake_timeout(TLS_HANDSHAKE_TIMEOUT)
            .workers(workers)
            .shutdown_timeout(30);
        server = match (tcp_listener, tls) {
            (Some(listener), Some(tls)) => server.listen_rustls_0_23(listener, tls)?,
            (Some(listener), None) => server.listen(listener)?,
            (None, _) => server,
        };
        if let Some(unix) = unix_listener {
            #[cfg(unix)]
            {
                server = server.listen_uds(unix)?;
            }
            #[cfg(not(unix))]
            match unix {}
        }
        server.run().await
    });
    // The last uses noted in memory are written before the process ends.
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = housekeeper.join();
    // A clean stop removes the socket file (a failed start too: it is dropped on the way out).
    #[cfg(unix)]
    drop(socket_file);
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// The combinations of `--listen` with other flags that cannot work, refused before anything is
/// bound: TLS and the default public URL need the TCP address; `--listen-mode` and
/// `--trusted-proxy unix` need the socket.
fn check_listeners(config: &Config, tcp: bool, socket: bool) -> Result<(), String> {
    if !tcp && config.tls_cert.is_some() {
        return Err("--tls-cert serves HTTPS on a TCP address, and the Unix socket serves plain HTTP: \
                    give a TCP --listen too, or leave out --tls-cert"
            .into());
    }
    if !tcp && config.public_url.is_none() {
        return Err("listening on a Unix socket only: give --public-url, the URL clients reach this \
                    service by (minted tokens name it, and revocable ones its discharge endpoint)"
            .into());
    }
    if !socket && config.listen_mode.is_some() {
        return Err("--listen-mode sets the mode of the Unix socket: give --listen unix:PATH too".into());
    }
    let mode = config.listen_mode.unwrap_or(listener::DEFAULT_SOCKET_MODE);
    // Connecting takes write permission on the socket file.
    if socket && config.trusted_proxies.contains(&TrustedProxy::UnixSocket) && mode & 0o002 != 0 {
        return Err(format!(
            "--trusted-proxy unix believes whatever connects to the socket about the client address, \
             and --listen-mode {mode:04o} lets every local user connect: give the socket to the proxy's \
             group only (e.g. --listen-mode 0660)"
        ));
    }
    if !socket && config.trusted_proxies.contains(&TrustedProxy::UnixSocket) {
        return Err("--trusted-proxy unix trusts what connects to the Unix socket: give --listen unix:PATH \
                    too"
        .into());
    }
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
