//! The decision cache: allowed decisions only, by a keyed hash of the token text and the request
//! context (never the token itself), bounded in entries and in bytes, each for at most the TTL
//! (and never past the token's expiry), served only while the revocation stream is live and was
//! heard within the staleness, emptied by a revocation of its token or key, a `reset`, or the
//! stream's loss.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::Verified;

/// A cache key: HMAC-SHA256 under a key drawn at start, so the map holds no token text and a
/// key learned from memory is useless in another process.
pub(crate) type Key = [u8; 32];

/// The limits of the cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) ttl: Duration,
    pub(crate) max_entries: usize,
    pub(crate) max_bytes: usize,
    pub(crate) staleness: Duration,
}

struct Entry {
    verified: Verified,
    expires: Instant,
    bytes: usize,
}

#[derive(Default)]
struct Map {
    entries: HashMap<Key, Entry>,
    bytes: usize,
}

pub(crate) struct Cache {
    mac: Hmac<Sha256>,
    map: Mutex<Map>,
    /// Changes with every invalidation: a decision fetched across one is not cached.
    epoch: AtomicU64,
    /// Whether the revocation stream is connected.
    live: AtomicBool,
    /// When the stream last sent anything (heartbeats included), in ms since [`origin`].
    heard_ms: AtomicU64,
    limits: Limits,
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(origin().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Cache {
    pub(crate) fn new(limits: Limits) -> Result<Cache, getrandom::Error> {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut())?;
        // HMAC takes keys of any length: this cannot fail.
        let mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_ref()).unwrap_or_else(|_| unreachable!());
        let _ = origin();
        Ok(Cache {
            mac,
            map: Mutex::new(Map::default()),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            heard_ms: AtomicU64::new(0),
            limits,
        })
    }

    /// The key of a decision: the token text and every field of the context the service sees.
    /// Separators are bytes that occur in none of them (0xff is never in UTF-8).
    pub(crate) fn key(&self, token: &str, operation: &str, resource: &str, ip: Option<IpAddr>) -> Key {
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        mac.update(&[0xff]);
        mac.update(operation.as_bytes());
        mac.update(&[0xff]);
        mac.update(resource.as_bytes());
        mac.update(&[0xff]);
        match ip {
            Some(IpAddr::V4(v4)) => mac.update(&v4.octets()),
            Some(IpAddr::V6(v6)) => mac.update(&v6.octets()),
            None => {}
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether cached decisions may be served: the stream is connected and was heard lately.
    pub(crate) fn trusted(&self) -> bool {
        self.live.load(Ordering::Acquire)
            && now_ms().saturating_sub(self.heard_ms.load(Ordering::Acquire))
                <= u64::try_from(self.limits.staleness.as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Verified> {
        if !self.trusted() {
            return None;
        }
        let map = self.map.lock().ok()?;
        let e = map.entries.get(key)?;
        (e.expires > Instant::now()).then(|| e.verified.clone())
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Remember an allowed decision fetched during `epoch`, until `expires` at the latest (the
    /// TTL bounds it too). Nothing is kept if anything was invalidated since, or while the stream
    /// is not trusted (a revocation would not reach the entry). When full (entries or bytes), the
    /// cache starts over: no scan for the oldest.
    pub(crate) fn insert(&self, key: Key, verified: Verified, epoch: u64, expires: Option<Instant>) {
        let bytes = verified.approx_bytes() + std::mem::size_of::<(Key, Entry)>();
        let ttl_end = Instant::now() + self.limits.ttl;
        let expires = expires.map_or(ttl_end, |e| e.min(ttl_end));
        if bytes > self.limits.max_bytes || self.limits.max_entries == 0 {
            return;
        }
        let Ok(mut map) = self.map.lock() else { return };
        // Checked under the lock: invalidations take it too, so none slips in between.
        if self.epoch() != epoch || !self.trusted() {
            return;
        }
        if map.entries.len() >= self.limits.max_entries || map.bytes + bytes > self.limits.max_bytes {
            map.entries.clear();
            map.bytes = 0;
        }
        if let Some(old) = map.entries.insert(key, Entry { verified, expires, bytes }) {
            map.bytes -= old.bytes;
        }
        map.bytes += bytes;
    }

    /// Drop every entry for which `dead` holds.
    pub(crate) fn invalidate(&self, dead: impl Fn(&Verified) -> bool) {
        if let Ok(mut map) = self.map.lock() {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            let mut freed = 0;
            map.entries.retain(|_, e| {
                let keep = !dead(&e.verified);
                if !keep {
                    freed += e.bytes;
                }
                keep
            });
            map.bytes -= freed;
        }
    }

    /// Drop everything (a `reset`, the stream lost or reconnected).
    pub(crate) fn clear(&self) {
        if let Ok(mut map) = self.map.lock() {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            map.entries.clear();
            map.bytes = 0;
        }
    }

    pub(crate) fn set_live(&self, live: bool) {
        self.clear();
        self.live.store(live, Ordering::Release);
        self.heard();
    }

    pub(crate) fn heard(&self) {
        self.heard_ms.store(now_ms(), Ordering::Release);
    }

    pub(crate) fn heard_within(&self, d: Duration) -> bool {
        now_ms().saturating_sub(self.heard_ms.load(Ordering::Acquire))
            <= u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.entries.len())
    }

    pub(crate) fn bytes(&self) -> usize {
        self.map.lock().map_or(0, |m| m.bytes)
    }
}
