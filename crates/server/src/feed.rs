//! The revocation feed pushed: the hub behind `GET /v1/revocations/stream`.
//!
//! One pump per node reads the revocations this node has applied (woken by the store's
//! [`Store::watch_applied`], never a poll of the database per client) and sends each, encoded once
//! as an SSE frame, into one bounded broadcast buffer. A client is a position in that buffer: it
//! costs a cursor, not a queue. A client that falls `--stream-buffer` entries behind is
//! disconnected (it resumes with `Last-Event-ID`); nothing is ever buffered for it without bound.
//!
//! A client first subscribes to the buffer, then replays the feed from its cursor (pages read from
//! the store, at most `--stream-replay-limit` entries, else a `reset` event), then goes live,
//! skipping what it already sent: the subscription comes before the replay's read, so what the
//! replay did not see the buffer holds, and nothing is lost or sent twice.
//!
//! Slots are capped twice: `--max-streams` on the node, and `--max-streams-per-address` per client
//! address (by the trusted-proxy rules; IPv6 per /64), so one client cannot take every slot from
//! the guards and proxies elsewhere. A slot is given back when its stream ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::web::Bytes;
use serde_json::json;
use tessera_store::{Revocation, RevocationTarget, Store};
use tokio::sync::{broadcast, watch};

use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::rfc3339;

/// Entries read from the store per query (replay and pump alike).
const PAGE: usize = 256;
/// How often an idle pump looks whether any client is left (it ends when none is).
const PUMP_IDLE: Duration = Duration::from_secs(1);
/// What a client's `EventSource` waits before reconnecting, in milliseconds.
const RETRY_MS: u32 = 2000;

/// One revocation as the feed shows it (the polling feed and the stream share this form).
pub(crate) fn revocation_view(r: &Revocation) -> serde_json::Value {
    let (kind, id) = match r.target {
        RevocationTarget::Token(tid) => ("token", tid.to_string()),
        RevocationTarget::Key(kid) => ("key", kid.to_string()),
    };
    json!({ "seq": r.seq, "at": rfc3339(r.at), "kind": kind, "id": id })
}

/// A revocation as an SSE event: `id:` is its sequence number.
fn event(r: &Revocation) -> String {
    format!("event: revocation\nid: {}\ndata: {}\n\n", r.seq, revocation_view(r))
}

/// The `reset` event: drop every cached decision, then follow from `seq`.
fn reset(seq: u64) -> Bytes {
    Bytes::from(format!("event: reset\nid: {seq}\ndata: {}\n\n", json!({ "last_seq": seq })))
}

/// A revocation encoded once for every client.
#[derive(Clone)]
struct Frame {
    seq: u64,
    bytes: Bytes,
}

/// The settings of the stream (from the configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Clients at once.
    pub(crate) max_streams: usize,
    /// Clients at once from one address (IPv6: one /64); 0 = no cap.
    pub(crate) max_per_address: usize,
    /// Time between heartbeats.
    pub(crate) heartbeat: Duration,
    /// Entries a client may fall behind.
    pub(crate) buffer: usize,
    /// Most entries replayed on a resume.
    pub(crate) replay_limit: usize,
}

struct Shared {
    tx: broadcast::Sender<Frame>,
    open: AtomicUsize,
    /// Open clients by address (an entry only while it holds at most `max_per_address` and at
    /// least one: at most `--max-streams` entries).
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Whether the pump runs (under this lock: a client subscribes and starts the pump, the pump
    /// ends only when no one is subscribed, never in between).
    pump: Mutex<bool>,
    /// Set when the service stops: every stream ends (else the graceful stop waits on them).
    closed: watch::Sender<bool>,
    settings: Settings,
}

/// The revocation stream's hub: the shared buffer, the pump, the count of open clients.
#[derive(Clone)]
pub struct Streams {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").field("open", &self.open()).finish_non_exhaustive()
    }
}

/// A client's place among the `--max-streams` and its address's `--max-streams-per-address`;
/// given back when its stream is dropped.
struct Permit {
    shared: Arc<Shared>,
    address: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ip) = self.address {
            // A poisoned lock still holds a consistent map (no code panics while holding it).
            let mut held = self.shared.per_address.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = held.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(&ip);
                }
            }
        }
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a client starts.
pub(crate) enum Start {
    /// From now on.
    Now,
    /// After this sequence number (`Last-Event-ID` or `?after=`).
    After(u64),
}

impl Streams {
    pub(crate) fn new(settings: Settings) -> Streams {
        let (tx, _) = broadcast::channel(settings.buffer.max(1));
        Streams {
            shared: Arc::new(Shared {
                tx,
                open: AtomicUsize::new(0),
                per_address: Mutex::new(HashMap::new()),
                pump: Mutex::new(false),
                closed: watch::channel(false).0,
                settings,
            }),
        }
    }

    /// Stream clients open on this node.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// End every stream and refuse new ones (the service is stopping).
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
    }

    /// Wait for SIGINT or SIGTERM, then [`Streams::close`]: open streams would otherwise hold the
    /// graceful stop for its whole timeout. (actix-server hears the same signals and stops.)
    pub(crate) async fn close_on_stop_signal(self) {
        #[cfg(unix)]
        {
            use actix_web::rt::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else { return };
            tokio::select! {
                _ = actix_web::rt::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = actix_web::rt::signal::ctrl_c().await;
        self.close();
    }

    /// Stream clients open on this node from `client`'s address (IPv6: its /48).
    pub fn open_from(&self, client: IpAddr) -> usize {
        let held = self.shared.per_address.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&stream_bucket_of(client)).copied().unwrap_or(0)
    }

    /// A slot for a client from `client` (by the trusted-proxy rules; `None` when unknown): 503
    /// when `--max-streams` are open, 429 when its address holds `--max-streams-per-address`.
    fn admit(&self, client: Option<IpAddr>) -> Result<Permit, ApiError> {
        let shared = &self.shared;
        let Settings { max_streams, max_per_address, .. } = shared.settings;
        if shared.open.fetch_add(1, Ordering::AcqRel) >= max_streams {
            shared.open.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::unavailable(format!(
                "{max_streams} revocation streams are open (--max-streams)"
            ))
            .with_headers(vec![("Retry-After", "5".into())]));
        }
        // From here on, dropping the permit gives back what it holds.
        let mut permit = Permit { shared: Arc::clone(shared), address: None };
        if let Some(ip) = client.map(stream_bucket_of).filter(|_| max_per_address > 0) {
            let mut held = shared.per_address.lock().unwrap_or_else(PoisonError::into_inner);
            let n = held.entry(ip).or_insert(0);
            if *n >= max_per_address {
                return Err(ApiError::too_many_streams(format!(
                    "this client address holds {max_per_address} revocation streams already \
                     (--max-streams-per-address); close one or retry later"
                ))
                .with_headers(vec![("Retry-After", "5".into())]));
            }
            *n += 1;
            permit.address = Some(ip);
        }
        Ok(permit)
    }

    /// A new client's stream of SSE chunks, or 503 when `--max-streams` are open or the service
    /// is stopping, 429 when `client`'s address holds `--max-streams-per-address`.
    pub(crate) fn subscribe(
        &self,
        store: &Store,
        start: Start,
        client: Option<IpAddr>,
    ) -> Result<impl futures_core::Stream<Item = Result<Bytes, actix_web::Error>> + 'static, ApiError> {
        let shared = &self.shared;
        if *shared.closed.borrow() {
            return Err(ApiError::unavailable("the service is stopping"));
        }
        let permit = self.admit(client)?;
        let rx = {
            let mut running = shared.pump.lock().map_err(ApiError::internal)?;
            let rx = shared.tx.subscribe();
            if !*running {
                *running = true;
                // The pump's first cursor is read before this client's replay reads the store, so
                // the replay sees everything up to it and the buffer everything after.
                tokio::spawn(pump(Arc::clone(shared), store.clone(), store.last_applied()));
            }
            rx
        };
        let applied = store.last_applied();
        let (cursor, first) = match start {
            Start::Now => (applied, Bytes::from(format!("retry: {RETRY_MS}\nid: {applied}\n\n"))),
            // An id this node has not reached (another database, one restored from a backup, or a
            // node behind the one the client left): nothing can be resumed from it safely.
            Start::After(after) if after > applied => (applied, reset(applied)),
            Start::After(after) => (after, Bytes::from(format!("retry: {RETRY_MS}\n\n"))),
        };
        let client = Client {
            store: store.clone(),
            rx,
            closed: shared.closed.subscribe(),
            cursor,
            replaying: true,
            replayed: 0,
            settings: shared.settings,
            first: Some(first),
            _permit: permit,
        };
        Ok(futures_util::stream::unfold(client, |mut c| async move {
            let chunk = c.next().await?;
            Some((Ok(chunk), c))
        }))
    }
}

/// One client's state: a position in the buffer and a cursor in the feed.
struct Client {
    store: Store,
    rx: broadcast::Receiver<Frame>,
    closed: watch::Receiver<bool>,
    /// The last sequence number sent (or skipped as already known).
    cursor: u64,
    replaying: bool,
    replayed: usize,
    settings: Settings,
    first: Option<Bytes>,
    _permit: Permit,
}

impl Client {
    /// The next chunk to send, or `None` to end the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.replaying {
            // The database did not answer: end; the client resumes from its last id.
            if let Some(chunk) = self.replay_page().await.ok()? {
                return Some(chunk);
            }
        }
        if *self.closed.borrow() {
            return None;
        }
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + self.settings.heartbeat,
            self.settings.heartbeat,
        );
        loop {
            tokio::select! {
                frame = self.rx.recv() => match frame {
                    Ok(f) if f.seq <= self.cursor => continue,
                    Ok(f) => {
                        self.cursor = f.seq;
                        return Some(f.bytes);
                    }
                    // Fell `--stream-buffer` behind (or the hub is gone): disconnected; the client
                    // resumes with Last-Event-ID.
                    Err(_) => return None,
                },
                _ = heartbeat.tick() => {
                    // A stale node ends its streams: clients drop their caches on the loss.
                    self.store.check_fresh().ok()?;
                    return Some(Bytes::from_static(b": heartbeat\n\n"));
                }
                _ = self.closed.changed() => return None,
            }
        }
    }

    /// One page of the replay as one chunk; `Ok(None)` once the replay has caught up.
    async fn replay_page(&mut self) -> Result<Option<Bytes>, ApiError> {
        // Only what this node has applied is sent: the pump sends the rest when it is.
        let applied = self.store.last_applied();
        let (store, after) = (self.store.clone(), self.cursor);
        let page = blocking(move || store.revocations_after(after, PAGE).map_err(ApiError::from)).await?;
        let page: Vec<_> = page.into_iter().filter(|r| r.seq <= applied).collect();
        if page.is_empty() {
            self.replaying = false;
            return Ok(None);
        }
        if self.replayed + page.len() > self.settings.replay_limit {
            // Too far behind to replay: start over from what this node has applied.
            self.cursor = applied;
            self.replayed = 0;
            return Ok(Some(reset(applied)));
        }
        self.replayed += page.len();
        let mut chunk = String::with_capacity(page.len() * 128);
        for r in &page {
            chunk.push_str(&event(r));
        }
        self.cursor = page.last().map_or(self.cursor, |r| r.seq);
        Ok(Some(Bytes::from(chunk)))
    }
}

/// Read what this node applies and send each revocation into the buffer, once, in order. Ends
/// when no client is left (the next client starts it again).
async fn pump(shared: Arc<Shared>, store: Store, mut cursor: u64) {
    let mut applied = store.watch_applied();
    loop {
        // A wake-up, or a look every PUMP_IDLE at whether anyone is still listening.
        let _ = tokio::time::timeout(PUMP_IDLE, applied.changed()).await;
        if shared.tx.receiver_count() == 0 {
            let Ok(mut running) = shared.pump.lock() else { return };
            if shared.tx.receiver_count() == 0 {
                *running = false;
                return;
            }
        }
        let upto = store.last_applied();
        while cursor < upto {
            let (st, after) = (store.clone(), cursor);
            let Ok(page) = blocking(move || st.revocations_after(after, PAGE).map_err(ApiError::from)).await
            else {
                break; // the database did not answer: the next wake-up tries again
            };
            let full = page.len() == PAGE;
            for r in page.iter().filter(|r| r.seq <= upto) {
                // No receiver is not an error: the next look ends the pump.
                let _ = shared.tx.send(Frame { seq: r.seq, bytes: Bytes::from(event(r)) });
                cursor = r.seq;
            }
            if !full || page.last().is_some_and(|r| r.seq >= upto) {
                // Every revocation up to `upto` is sent (other entries are not revocations).
                cursor = upto;
            }
        }
    }
}

/// The address a stream slot is counted under: IPv4 as it is, IPv6 by its /48. Streams last, so
/// the rate limiter's /64 is too fine here: one home connection's /56 holds 256 of them, enough
/// to take every slot of a node (`--max-streams` / 8 = 128 by default).
fn stream_bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into()),
        },
        v4 => v4,
    }
}
