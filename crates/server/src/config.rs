//! Configuration: flags and `TESSERA_*` environment variables, with safe defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::listener::{Listen, TrustedProxy};

/// A database URL. It may hold a password: `Debug` masks it (see [`Config::database_display`]).
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub String);

impl DatabaseUrl {
    /// The URL, password included: for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(s.to_owned()))
    }
}

impl DatabaseUrl {
    /// The URL with its password replaced by `***`: the only form that may be printed or put in
    /// an error message.
    pub fn redacted(&self) -> String {
        if !(self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")) {
            // The `key=value` form: every value after a key naming a password is hidden.
            let words: Vec<String> = self
                .0
                .split_whitespace()
                .map(|w| match w.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("pass") => format!("{k}=***"),
                    _ => w.to_owned(),
                })
                .collect();
            return words.join(" ");
        }
        let (base, query) = self.0.split_once('?').map_or((self.0.as_str(), None), |(b, q)| (b, Some(q)));
        let mut out = match (base.find("://"), base.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let user = base[s + 3..at].split(':').next().unwrap_or("");
                format!("{}{user}:***{}", &base[..s + 3], &base[at..])
            }
            _ => base.to_owned(),
        };
        // A password may also come as a parameter (`?password=...`).
        if let Some(q) = query {
            let params: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    // `pass%77ord` is `password` to the driver: hide whatever might be one.
                    Some((k, _)) if k.to_ascii_lowercase().contains("pass") || k.contains('%') => {
                        format!("{k}=***")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            out = format!("{out}?{}", params.join("&"));
        }
        out
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

/// A JWS algorithm a configuration can name.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAlg {
    /// ECDSA P-256.
    Es256,
    /// Ed25519.
    Eddsa,
    /// HMAC-SHA256 with the per-key envelope secret.
    Hs256,
}

impl JwtAlg {
    /// The core's algorithm.
    pub fn algorithm(self) -> tessera_core::envelope::Algorithm {
        use tessera_core::envelope::Algorithm;
        match self {
            JwtAlg::Es256 => Algorithm::Es256,
            JwtAlg::Eddsa => Algorithm::EdDsa,
            JwtAlg::Hs256 => Algorithm::Hs256,
        }
    }
}

/// Which header a trusted proxy writes the client chain into.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, ...` (bare addresses).
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:443"`.
    #[value(name = "forwarded")]
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "X-Forwarded-For",
            ForwardedHeader::Forwarded => "Forwarded",
        }
    }
}

/// How log lines are written on standard error.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of text per event: time, level, target, message, `key=value` fields.
    #[value(name = "text")]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, the fields), for log shippers.
    #[value(name = "json")]
    Json,
}

/// The forward-auth policy (`--authz-policy`), loaded and checked when the flags are read.
#[derive(Clone, Debug)]
pub struct AuthzPolicy {
    /// The file it was read from.
    pub path: PathBuf,
    /// The checked policy.
    pub policy: std::sync::Arc<tessera_policy::Policy>,
}

fn authz_policy(s: &str) -> Result<AuthzPolicy, String> {
    let path = PathBuf::from(s);
    let policy = tessera_policy::Policy::load(&path).map_err(|e| e.to_string())?;
    Ok(AuthzPolicy { path, policy: std::sync::Arc::new(policy) })
}

/// The longest duration a flag takes: 100 years. Deadlines are `Instant::now() + d`, which
/// panics past what the clock can hold: a flag meant as "no limit" must not break every request.
const MAX_FLAG_DURATION: Duration = Duration::from_secs(100 * 31_557_600); // humantime's `100y`

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 30s, 5m, 6h, 90d)"))?;
    if d > MAX_FLAG_DURATION {
        return Err("at most 100 years".into());
    }
    Ok(d)
}

/// A duration above zero (a bound that must leave time to do anything).
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

/// A duration as a person writes it in a flag, in its largest whole unit: `90d`, `6h`, `30s`,
/// `250ms` (what `humantime` would print as `2months 29days 2h 52m 48s` for 90 days).
pub(crate) fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    [(86_400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(u, _)| s > 0 && s % u == 0)
        .map_or(format!("{s}s"), |(u, n)| format!("{}{n}", s / u))
}

/// `--audit-retention`: a duration, or `off` (zero: keep every entry).
fn retention(s: &str) -> Result<Duration, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 400d, or off to keep every entry)"))
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err("a fraction above 0 and at most 1, e.g. 0.25".into()),
    }
}

/// Everything the service can be told. `tessera serve` and `tessera-server` share these flags.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Where to listen: a TCP address (loopback by default; port 0 picks a free port) and/or a
    /// Unix socket `unix:PATH` (plain HTTP, for a proxy on this host): repeatable or
    /// comma-separated, at most one of each.
    #[arg(long, env = "TESSERA_LISTEN", value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub listen: Vec<Listen>,

    /// Permission bits of the `--listen unix:` socket file, in octal (default 0660: its owner and
    /// group may connect). Removed on a clean stop; a stale one is replaced at start.
    #[arg(long, env = "TESSERA_LISTEN_MODE", value_parser = crate::listener::socket_mode)]
    pub listen_mode: Option<u32>,

    /// A PostgreSQL database shared by a cluster of nodes (`postgres://user:password@host/db`);
    /// absent: the embedded redb database under `--data-dir`. Every node needs the same master
    /// key (`TESSERA_MASTER_KEY`, or the same key file).
    #[arg(long = "database", env = "TESSERA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,

    /// On a cluster: how long a node that cannot reach the database keeps verifying from memory
    /// before it refuses (503) until the database answers again.
    #[arg(long, env = "TESSERA_MAX_STALENESS", default_value = "10s", value_parser = duration)]
    pub max_staleness: Duration,

    /// TLS to PostgreSQL: disable, require (encrypted, certificate not checked), verify-ca or
    /// verify-full; the URL's `sslmode` must agree. Default: verify-full when a CA is given or the
    /// host is another machine, disable for localhost and Unix sockets (docs/CLUSTER.md).
    #[arg(long, env = "TESSERA_DATABASE_SSLMODE")]
    pub database_sslmode: Option<tessera_store::SslMode>,

    /// PEM file of the CA that signed PostgreSQL's certificate (a private CA); the URL's
    /// `sslrootcert` works too.
    #[arg(long, env = "TESSERA_DATABASE_CA")]
    pub database_ca: Option<PathBuf>,

    /// Serve HTTPS with this PEM certificate chain (server certificate first); needs --tls-key.
    /// Read again when the file changes (certificate renewal without a restart).
    #[arg(long, env = "TESSERA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, RSA or EC).
    #[arg(long, env = "TESSERA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Directory for the database and, unless set otherwise, the master key file.
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Master key file (created 0600 on first start); `TESSERA_MASTER_KEY` (hex) takes precedence.
    #[arg(long, env = "TESSERA_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,

    /// Public base URL of this service: the location of minted tokens and of the discharge
    /// endpoint in revocable tokens. Default: http://<listen address> (the TCP one; required when
    /// the service listens on a Unix socket only).
    #[arg(long, env = "TESSERA_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// `iss` of JWT envelopes. Default: the public URL.
    #[arg(long, env = "TESSERA_ISSUER")]
    pub issuer: Option<String>,

    /// Subject of the administrator, who may act for any subject and manage keys.
    #[arg(long, env = "TESSERA_ADMIN_SUBJECT", default_value = "admin")]
    pub admin_subject: String,

    /// Also write the first-start admin token to this file (mode 0600).
    #[arg(long, env = "TESSERA_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Lifetime of minted tokens when the request names none.
    #[arg(long, env = "TESSERA_DEFAULT_TTL", default_value = "24h", value_parser = duration)]
    pub default_ttl: Duration,

    /// Longest lifetime a mint request may ask for.
    #[arg(long, env = "TESSERA_MAX_TTL", default_value = "90d", value_parser = duration)]
    pub max_ttl: Duration,

    /// Lifetime of discharges (how long a revocation may take to bite revocable tokens).
    #[arg(long, env = "TESSERA_DISCHARGE_TTL", default_value = "5m", value_parser = duration)]
    pub discharge_ttl: Duration,

    /// Longest lifetime of a JWT envelope.
    #[arg(long, env = "TESSERA_JWT_TTL", default_value = "5m", value_parser = duration)]
    pub jwt_ttl: Duration,

    /// Algorithm of `POST /v1/jwt` envelopes when the request names none: es256 (what every
    /// gateway verifies), eddsa, or hs256 (shared secret, for compatibility).
    #[arg(long, env = "TESSERA_JWT_ALG", value_enum, default_value = "es256")]
    pub jwt_alg: JwtAlg,

    /// How long a next signing key is published in the JWKS before a rotation may make it sign
    /// (longer than any verifier's JWKS cache lifetime).
    #[arg(long, env = "TESSERA_SIGNING_PREPUBLISH", default_value = "24h", value_parser = duration)]
    pub signing_prepublish: Duration,

    /// `Cache-Control: max-age` of the JWKS and discovery documents.
    #[arg(long, env = "TESSERA_JWKS_MAX_AGE", default_value = "5m", value_parser = duration)]
    pub jwks_max_age: Duration,

    /// Lifetime of a session's access tokens when the request (or its application) names none.
    #[arg(long, env = "TESSERA_SESSION_ACCESS_TTL", default_value = "15m", value_parser = duration)]
    pub session_access_ttl: Duration,

    /// Lifetime of a session's refresh tokens when the request names none.
    #[arg(long, env = "TESSERA_SESSION_REFRESH_TTL", default_value = "72h", value_parser = duration)]
    pub session_refresh_ttl: Duration,

    /// `refreshOnExpire` rotates the refresh token once less than this fraction of its life is left.
    #[arg(long, env = "TESSERA_REFRESH_ROTATE_FRACTION", default_value_t = 0.25, value_parser = fraction)]
    pub refresh_rotate_fraction: f64,

    /// A spent refresh token presented again within this window gets the same answer (a client
    /// that lost a response); later, it revokes its session.
    #[arg(long, env = "TESSERA_REFRESH_GRACE", default_value = "10s", value_parser = duration)]
    pub refresh_grace: Duration,

    /// JSON file of trusted identity providers for `POST /v1/exchange` (see docs/SESSIONS.md).
    #[arg(long, env = "TESSERA_EXCHANGE_CONFIG")]
    pub exchange_config: Option<PathBuf>,

    /// Allow `"ttl": "never"` at mint (tokens without expiry). Off: every minted token expires.
    #[arg(long, env = "TESSERA_ALLOW_NO_EXPIRY")]
    pub allow_no_expiry: bool,

    /// How often the housekeeping round runs: last uses written, expiry notices, unused tokens.
    #[arg(long, env = "TESSERA_HOUSEKEEPING_INTERVAL", default_value = "30s", value_parser = duration)]
    pub housekeeping_interval: Duration,

    /// Receives a signed JSON event for each token at each expiry threshold (at least once).
    #[arg(long, env = "TESSERA_NOTIFY_WEBHOOK")]
    pub notify_webhook: Option<String>,

    /// File holding the webhook's HMAC-SHA256 secret (at least 32 bytes); `TESSERA_NOTIFY_SECRET`
    /// takes precedence.
    #[arg(long, env = "TESSERA_NOTIFY_SECRET_FILE")]
    pub notify_secret_file: Option<PathBuf>,

    /// Expiry notice thresholds before expiry (0s: at expiry), comma-separated.
    #[arg(long, env = "TESSERA_NOTIFY_THRESHOLDS", value_delimiter = ',', default_value = "7d,1d,0s", value_parser = duration)]
    pub notify_thresholds: Vec<Duration>,

    /// Revoke tokens unused (never, or not since) for this long. Off by default.
    #[arg(long, env = "TESSERA_REVOKE_UNUSED_AFTER", value_parser = duration)]
    pub revoke_unused_after: Option<Duration>,

    /// Audit entries older than this are deleted by the housekeeping round, from the start of
    /// the chain (the last one deleted stays as the anchor the rest verifies from); `off` (or
    /// `0s`) keeps every entry.
    #[arg(long, env = "TESSERA_AUDIT_RETENTION", default_value = "400d", value_parser = retention)]
    pub audit_retention: Duration,

    /// Requests per second allowed per client address on /v1 (burst: twice that); 0 = no limit.
    #[arg(long, env = "TESSERA_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,

    /// Token texts `/v1/verify` remembers after they verify, so the same token again skips its
    /// signature chain (caveats and revocation are still checked; any key change forgets them);
    /// 0 = remember nothing. About 1.9 KiB of memory each for 5-caveat tokens.
    #[arg(long, env = "TESSERA_VERIFY_MEMO", default_value_t = 16_384)]
    pub verify_memo: usize,

    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, env = "TESSERA_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,

    /// Networks of reverse proxies whose X-Forwarded-For is trusted, or `unix`: whatever
    /// connects to the `--listen unix:` socket (repeatable, or comma-separated).
    #[arg(long = "trusted-proxy", env = "TESSERA_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<TrustedProxy>,

    /// The one header trusted proxies write the client address into (the other is ignored, so a
    /// client cannot smuggle one past a proxy that only appends to the other).
    #[arg(long, env = "TESSERA_FORWARDED_HEADER", value_enum, default_value = "x-forwarded-for")]
    pub forwarded_header: ForwardedHeader,

    /// Forward-auth policy file (TOML, docs/PROXIES.md) for `/v1/authz/*`: read and checked at
    /// start (an error names its line); without it those endpoints answer 503.
    #[arg(long, env = "TESSERA_AUTHZ_POLICY", value_parser = authz_policy)]
    pub authz_policy: Option<AuthzPolicy>,

    /// Worker threads (default: one per core).
    #[arg(long, env = "TESSERA_WORKERS")]
    pub workers: Option<usize>,

    /// Log lines on standard error as `text` or `json` (one object per line, for log shippers).
    #[arg(long, env = "TESSERA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// What is logged: a level (error, warn, info, debug, trace) or RUST_LOG-style directives
    /// (`info,tessera::access=off`). Wins over RUST_LOG; neither set: info.
    #[arg(long, env = "TESSERA_LOG_LEVEL", value_parser = crate::logging::parse_level)]
    pub log_level: Option<String>,

    /// Time a client has to send a request's head (method, path, headers) once it connected or
    /// finished its previous request; slower: 408 and the connection is closed.
    #[arg(long, env = "TESSERA_HEAD_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub head_timeout: Duration,

    /// Time a client has to send a request's whole body, counted from its head; slower: 408
    /// and the connection is closed (a body trickled byte by byte holds nothing for longer).
    #[arg(long, env = "TESSERA_BODY_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub body_timeout: Duration,

    /// Open connections allowed per client address (IPv6 per /64); a connection over it is
    /// closed as it is accepted. Trusted proxies are not counted. 0 = no cap.
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub max_connections_per_address: usize,

    /// Time a `POST /v1/backup` answer may take in all; past it the stream is cut (the client
    /// sees the connection closed before the announced length) and the node's one backup place
    /// is free again.
    #[arg(long, env = "TESSERA_BACKUP_TIMEOUT", default_value = "1h", value_parser = positive_duration)]
    pub backup_timeout: Duration,

    /// Time the client of a `POST /v1/backup` answer may go without taking the next 64 KiB of
    /// it; past it the stream is cut and the backup place is free again (a client that stops
    /// reading holds it no longer than this).
    #[arg(long, env = "TESSERA_BACKUP_STALL_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub backup_stall_timeout: Duration,

    /// Clients of `GET /v1/revocations/stream` open at once on this node; one more gets a 503.
    #[arg(long, env = "TESSERA_MAX_STREAMS", default_value_t = 1024)]
    pub max_streams: usize,

    /// Clients of `GET /v1/revocations/stream` open at once from one client address (by the
    /// trusted-proxy rules; IPv6 per /48); one more gets a 429. 0 = no cap.
    #[arg(long, env = "TESSERA_MAX_STREAMS_PER_ADDRESS", default_value_t = 8)]
    pub max_streams_per_address: usize,

    /// Time between two heartbeats (SSE comments) on an idle revocation stream.
    #[arg(long, env = "TESSERA_STREAM_HEARTBEAT", default_value = "15s", value_parser = duration)]
    pub stream_heartbeat: Duration,

    /// Revocations a stream client may fall behind the node before it is disconnected (one
    /// buffer shared by every client; a client is a position in it).
    #[arg(long, env = "TESSERA_STREAM_BUFFER", default_value_t = 1024)]
    pub stream_buffer: usize,

    /// Most revocations replayed to a stream client resuming with `Last-Event-ID`; further
    /// behind, it gets a `reset` event instead (drop every cached decision).
    #[arg(long, env = "TESSERA_STREAM_REPLAY_LIMIT", default_value_t = 10_000)]
    pub stream_replay_limit: usize,
}

impl Config {
    /// Defaults for a data directory (tests, embedding).
    pub fn for_data_dir(dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: vec![Listen::Tcp("127.0.0.1:0".into())],
            listen_mode: None,
            database_url: None,
            max_staleness: Duration::from_secs(10),
            database_sslmode: None,
            database_ca: None,
            tls_cert: None,
            tls_key: None,
            data_dir: dir.into(),
            master_key_file: None,
            public_url: None,
            issuer: None,
            admin_subject: "admin".into(),
            admin_token_file: None,
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
            discharge_ttl: Duration::from_secs(300),
            jwt_ttl: Duration::from_secs(300),
            jwt_alg: JwtAlg::Es256,
            signing_prepublish: Duration::from_secs(24 * 3600),
            jwks_max_age: Duration::from_secs(300),
            session_access_ttl: Duration::from_secs(15 * 60),
            session_refresh_ttl: Duration::from_secs(72 * 3600),
            refresh_rotate_fraction: 0.25,
            refresh_grace: Duration::from_secs(10),
            exchange_config: None,
            allow_no_expiry: false,
            housekeeping_interval: Duration::from_secs(30),
            notify_webhook: None,
            notify_secret_file: None,
            notify_thresholds: vec![
                Duration::from_secs(7 * 86_400),
                Duration::from_secs(86_400),
                Duration::ZERO,
            ],
            revoke_unused_after: None,
            audit_retention: Duration::from_secs(400 * 86_400),
            rate_limit: 100,
            verify_memo: 16_384,
            body_limit: 64 * 1024,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::XForwardedFor,
            authz_policy: None,
            workers: None,
            log_format: LogFormat::Text,
            log_level: None,
            head_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_connections_per_address: 256,
            backup_timeout: Duration::from_secs(3600),
            backup_stall_timeout: Duration::from_secs(60),
            max_streams: 1024,
            max_streams_per_address: 8,
            stream_heartbeat: Duration::from_secs(15),
            stream_buffer: 1024,
            stream_replay_limit: 10_000,
        }
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("tessera.redb")
    }

    /// The database URL with its password replaced by `***` (for logs).
    pub fn database_display(&self) -> String {
        match &self.database_url {
            None => self.db_path().display().to_string(),
            Some(url) => url.redacted(),
        }
    }

    /// The master key file.
    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file.clone().unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    /// Public base URL without a trailing slash. Without `--public-url`, the TCP address's URL
    /// (`http://localhost` when there is none: `run` refuses to start that way).
    pub fn public_url(&self) -> String {
        let tcp = self.listen.iter().find_map(|l| match l {
            Listen::Tcp(addr) => Some(addr.as_str()),
            Listen::Unix(_) => None,
        });
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("{}://{}", self.scheme(), tcp.unwrap_or("localhost")))
            .trim_end_matches('/')
            .to_owned()
    }

    /// `https` when the listener serves TLS (`--tls-cert`), else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The issuer of envelopes.
    pub fn issuer(&self) -> String {
        self.issuer.clone().unwrap_or_else(|| self.public_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_past_a_hundred_years_are_refused() {
        // Review of issue 24: `--backup-timeout 300000000000y` was taken, then every backup's
        // deadline (`Instant::now() + d`) overflowed and its answer came back empty.
        assert_eq!(duration("300000000000y").unwrap_err(), "at most 100 years");
        assert_eq!(positive_duration("101y").unwrap_err(), "at most 100 years");
        assert_eq!(duration("100y"), Ok(MAX_FLAG_DURATION));
    }

    #[test]
    fn durations_print_as_configured() {
        for text in ["90d", "24h", "1d", "5m", "30s", "0s", "250ms", "90m", "36h"] {
            let d = duration(text).unwrap();
            let shown = show_duration(d);
            assert_eq!(duration(&shown).unwrap(), d, "{text} -> {shown}");
        }
        assert_eq!(show_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(show_duration(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(show_duration(Duration::from_secs(36 * 3600)), "36h");
    }

    #[test]
    fn the_database_password_never_prints() {
        let mut c = Config::for_data_dir("/d");
        c.database_url = Some("postgres://tessera:s3cret-pw@db.internal:5432/tessera".parse().unwrap());
        let shown = format!("{c:?} {}", c.database_display());
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("postgres://tessera:***@db.internal:5432/tessera"), "{shown}");
        for url in [
            "postgres://db.internal/tessera?user=t&password=s3cret-pw",
            "postgres://t@db.internal/tessera?sslmode=require&password=s3cret-pw",
            "postgres://t:s3cret-pw@db.internal/tessera?sslmode=require",
            "postgres://t@db.internal/tessera?pass%77ord=s3cret-pw",
            "host=db.internal dbname=tessera/tessera user=t password=s3cret-pw",
        ] {
            let shown = DatabaseUrl(url.into()).redacted();
            assert!(!shown.contains("s3cret-pw"), "{shown}");
            assert!(shown.contains("db.internal"), "{shown}");
        }
    }
}
