//! A trusted issuer's public keys: a JWKS read from a file at start, or fetched from a URL on
//! first use and again when a token names a `kid` the cache does not hold.
//!
//! An unauthenticated caller chooses the `kid`, so the fetching is bounded whatever it sends:
//! one fetch in flight per issuer, shared by every request that waits for it (they wait on the
//! async workers, not on blocking threads); at most one attempt per [`REFETCH`], failed or not;
//! a fetch has a total deadline ([`FETCH_DEADLINE`]: connect, send, answer and body together)
//! and reads at most [`MAX_JWKS`] bytes. A failed fetch keeps the keys already known. Callers
//! learn only that the keys are unavailable; what went wrong (the URL, the upstream's answer)
//! goes to the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_core::envelope::PublicKey;
use tokio::sync::watch;

/// Shortest time between two fetches of an issuer's JWKS, whether the last one failed or not.
pub(crate) const REFETCH: Duration = Duration::from_secs(30);
/// Longest time one fetch may take, from connecting to the last byte of the body.
pub(crate) const FETCH_DEADLINE: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
pub(crate) const MAX_JWKS: u64 = 256 * 1024;

/// Why no key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// The issuer's keys (as last fetched, or from its file) have no such `kid`.
    Unknown,
    /// The keys could not be fetched (now or at the last attempt, less than [`REFETCH`] ago).
    Unavailable,
}

/// Where the keys come from.
#[derive(Debug)]
enum Source {
    File,
    Url { url: String, agent: ureq::Agent },
}

#[derive(Debug, Default)]
struct Cache {
    by_kid: HashMap<String, PublicKey>,
    /// When the last fetch started.
    attempted: Option<Instant>,
    /// Whether the last fetch failed.
    failed: bool,
    /// The fetch in flight: its receiver turns `true` when the cache holds its outcome.
    inflight: Option<watch::Receiver<bool>>,
}

/// One issuer's keys.
#[derive(Debug)]
pub(crate) struct IssuerKeys {
    /// The issuer's identifier, for the log.
    issuer: String,
    source: Source,
    cache: Arc<Mutex<Cache>>,
}

fn lock(cache: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    // The cache holds no invariant a panic could break halfway: keep using it.
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The public keys of a JWKS with a `kid`. Keys of other types, and keys whose `alg`, `use` or
/// `key_ops` say they are not for verifying signatures of their algorithm, are skipped.
pub(crate) fn parse_jwks(doc: &Value) -> Result<HashMap<String, PublicKey>, String> {
    let keys = doc["keys"].as_array().ok_or("the JWKS has no \"keys\" array")?;
    Ok(keys
        .iter()
        .filter_map(|k| Some((k["kid"].as_str()?.to_owned(), PublicKey::from_jwk(k).ok()?)))
        .collect())
}

/// The URL without any user information (`user:password@`), for the log.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://[redacted]@{host}{path}"),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

fn fetch(agent: &ureq::Agent, url: &str) -> Result<HashMap<String, PublicKey>, String> {
    let mut res = agent.get(url).call().map_err(|e| e.to_string())?;
    let text = res
        .body_mut()
        .with_config()
        .limit(MAX_JWKS)
        .read_to_string()
        .map_err(|e| format!("reading the body (at most {MAX_JWKS} bytes): {e}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    parse_jwks(&doc)
}

/// Ends a fetch whatever happens to it (a panic included): the cache learns that nothing is in
/// flight any more, and the waiters wake.
struct Finish {
    cache: Arc<Mutex<Cache>>,
    done: watch::Sender<bool>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        lock(&self.cache).inflight = None;
        // No receiver left is fine: nobody waits.
        let _ = self.done.send(true);
    }
}

impl IssuerKeys {
    /// Keys read from a file at start; never fetched.
    pub(crate) fn from_file(issuer: &str, keys: HashMap<String, PublicKey>) -> Self {
        let cache = Cache { by_kid: keys, ..Cache::default() };
        IssuerKeys { issuer: issuer.to_owned(), source: Source::File, cache: Arc::new(Mutex::new(cache)) }
    }

    /// Keys fetched from `url` on first use.
    pub(crate) fn from_url(issuer: &str, url: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(FETCH_DEADLINE))
            .http_status_as_error(true)
            .build()
            .new_agent();
        IssuerKeys {
            issuer: issuer.to_owned(),
            source: Source::Url { url: url.to_owned(), agent },
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    /// The key of `kid` if the cache holds it (never fetches).
    pub(crate) fn cached(&self, kid: &str) -> Option<PublicKey> {
        lock(&self.cache).by_kid.get(kid).copied()
    }

    /// The key of `kid`: from the cache, or after the fetch in flight, or after a new fetch if
    /// none started within [`REFETCH`].
    pub(crate) async fn key(&self, kid: &str) -> Result<PublicKey, Missing> {
        let mut done = {
            let mut cache = lock(&self.cache);
            if let Some(k) = cache.by_kid.get(kid) {
                return Ok(*k);
            }
            let Source::Url { url, agent } = &self.source else { return Err(Missing::Unknown) };
            match &cache.inflight {
                Some(done) => done.clone(),
                None if cache.attempted.is_some_and(|t| t.elapsed() < REFETCH) => {
                    return Err(if cache.failed { Missing::Unavailable } else { Missing::Unknown });
                }
                None => {
                    cache.attempted = Some(Instant::now());
                    let (tx, rx) = watch::channel(false);
                    cache.inflight = Some(rx.clone());
                    self.spawn_fetch(url.clone(), agent.clone(), tx);
                    rx
                }
            }
        };
        // The fetch ends by its own deadline; waiting is bounded as well, in case the blocking
        // pool is slow to start it. A waiter that gives up leaves the fetch running for others.
        let waited = FETCH_DEADLINE + Duration::from_secs(1);
        let _ = actix_web::rt::time::timeout(waited, done.wait_for(|d| *d)).await;
        let cache = lock(&self.cache);
        match cache.by_kid.get(kid) {
            Some(k) => Ok(*k),
            None if cache.failed || cache.inflight.is_some() => Err(Missing::Unavailable),
            None => Err(Missing::Unknown),
        }
    }

    /// Start a fetch on the blocking pool; it fills the cache itself, so it completes (within
    /// its deadline) even if every request that waited for it has gone.
    fn spawn_fetch(&self, url: String, agent: ureq::Agent, done: watch::Sender<bool>) {
        let finish = Finish { cache: self.cache.clone(), done };
        let issuer = self.issuer.clone();
        // Not awaited: the waiters watch `done`.
        drop(actix_web::rt::task::spawn_blocking(move || {
            let outcome = fetch(&agent, &url);
            let mut cache = lock(&finish.cache);
            match outcome {
                Ok(keys) => {
                    cache.by_kid = keys;
                    cache.failed = false;
                }
                Err(e) => {
                    tracing::warn!(
                        "exchange: issuer \"{issuer}\": fetching its JWKS {} failed (keeping {} known keys; next attempt in {} s at the earliest): {e}",
                        redacted(&url),
                        cache.by_kid.len(),
                        REFETCH.as_secs()
                    );
                    cache.failed = true;
                }
            }
            drop(cache);
            drop(finish);
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn user_information_never_reaches_the_log() {
        assert_eq!(redacted("https://u:pw@idp.test/jwks?a=b@c"), "https://[redacted]@idp.test/jwks?a=b@c");
        assert_eq!(redacted("https://idp.test/jwks"), "https://idp.test/jwks");
        assert_eq!(redacted("https://u:p@w@idp.test"), "https://[redacted]@idp.test");
        assert_eq!(redacted("https://idp.test?to=a@b"), "https://idp.test?to=a@b");
    }
}
