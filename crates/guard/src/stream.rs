//! The revocation stream subscriber: one thread per guard with a small runtime of its own (so
//! it works under any server framework), following `GET /v1/revocations/stream` and dropping
//! cached decisions as revocations arrive.

use std::sync::{Arc, Weak};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;

use crate::engine::Engine;
use crate::Error;

/// Waits between reconnections (doubling up to the last).
const BACKOFF: [u64; 5] = [100, 250, 500, 1000, 2000];

pub(crate) fn spawn(engine: Weak<Engine>) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Client(format!("the revocation stream's runtime: {e}")))?;
    std::thread::Builder::new()
        .name("tessera-guard-stream".into())
        .spawn(move || rt.block_on(follow(engine)))
        .map_err(|e| Error::Client(format!("the revocation stream's thread: {e}")))?;
    Ok(())
}

/// Follow the stream until the guard is dropped.
async fn follow(engine: Weak<Engine>) {
    let mut failures = 0usize;
    loop {
        let Some(e) = engine.upgrade() else { return };
        if connect_and_read(e, &engine).await {
            failures = 0;
        }
        // Lost (or never had): nothing cached is trusted any more.
        let Some(e) = engine.upgrade() else { return };
        e.cache.set_live(false);
        drop(e);
        let wait = BACKOFF[failures.min(BACKOFF.len() - 1)];
        failures += 1;
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// One connection: read events until the stream ends, errs, falls silent for the staleness or
/// the guard is dropped. Whether it connected. The engine is held only until the stream is
/// open: while it is read, only the weak reference is, so dropping the last `Guard` ends it.
async fn connect_and_read(e: Arc<Engine>, engine: &Weak<Engine>) -> bool {
    let res = e
        .client
        .get(format!("{}/v1/revocations/stream", e.url))
        .header("Accept", "text/event-stream")
        .send()
        .await;
    let Ok(res) = res else { return false };
    if !res.status().is_success() {
        // Refused (a 503 or 429 when the service's stream limits are reached): counted once per
        // episode in the guard's stats, since this crate has no logger to tell anyone.
        e.stream_refused(res.status().as_u16());
        return false;
    }
    e.stream_accepted();
    // Live from now: whatever was cached before is dropped (set_live clears), and the stream
    // starts at the service's present position, so nothing needs replaying.
    e.cache.set_live(true);
    let staleness = e.limits.staleness;
    let cache_of = Arc::downgrade(&e);
    drop(e);
    let bytes = res.bytes_stream().inspect(move |_| {
        // Any bytes (heartbeats included) are a sign of life.
        if let Some(e) = cache_of.upgrade() {
            e.cache.heard();
        }
    });
    let mut events = bytes.eventsource();
    let check = (staleness / 4).max(Duration::from_millis(50));
    loop {
        let next = tokio::time::timeout(check, events.next()).await;
        let Some(e) = engine.upgrade() else { return true };
        match next {
            Err(_) if e.cache.heard_within(staleness) => continue,
            // Silent for longer than the staleness: a half-open connection counts as lost.
            Err(_) => return true,
            Ok(None) | Ok(Some(Err(_))) => return true,
            Ok(Some(Ok(ev))) => match ev.event.as_str() {
                "revocation" => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.data) else {
                        e.cache.clear();
                        continue;
                    };
                    let id = v["id"].as_str().unwrap_or_default().to_owned();
                    match v["kind"].as_str() {
                        Some("token") => e.cache.invalidate(|d| d.tid() == Some(id.as_str())),
                        Some("key") => e.cache.invalidate(|d| d.kid() == Some(id.as_str())),
                        // Something this guard does not understand: drop everything.
                        _ => e.cache.clear(),
                    }
                }
                "reset" => e.cache.clear(),
                _ => {}
            },
        }
    }
}
