//! Logs: `tracing` events on standard error, as text lines or JSON lines (`--log-format`),
//! filtered by `--log-level` or `RUST_LOG`, written by a thread of their own.
//!
//! No request waits on the log, and no log line wakes a thread: events are formatted on the
//! thread that emits them and appended to one in-memory buffer (a mutex held for a copy); a
//! writer thread takes the whole buffer every [`FLUSH_EVERY`] and writes it to standard error in
//! one call. The buffer holds at most [`LOG_BUFFER_BYTES`]; when the writer falls behind (a slow
//! pipe, a stopped terminal), new lines are dropped, never waited for, and counted
//! (`tessera_log_lines_dropped_total` in `/metrics`). tracing-appender's non-blocking writer was
//! measured first: its channel wakes the writer for each line, which cost `/v1/verify` a quarter
//! of its throughput with the access log on (docs/BENCHMARKS.md).
//!
//! The access line (one per request) does not go through `fmt`: `logging/access.rs` writes it by
//! hand, byte for byte the same, into the same buffer (`fmt` cost verify a quarter of its
//! throughput).
//!
//! The filter: `--log-level` (or `TESSERA_LOG_LEVEL`) when given, else `RUST_LOG`, else `info`.
//! Both take a level or `RUST_LOG`-style directives (`info,tessera::access=off`). Only `tracing`
//! events are logged: the `log` records some dependencies write (tokio-postgres's statements and
//! their parameters at debug) are not routed here.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

mod access;
pub(crate) use access::{enabled as access_enabled, write as access, AccessLine};

/// Bytes of log lines the writer thread may be behind by; past this, lines are dropped and
/// counted (about 16,000 access lines).
pub const LOG_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// How often the writer thread writes what was logged.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The filter used when neither `--log-level` nor `RUST_LOG` is set.
pub(crate) const DEFAULT_LEVEL: &str = "info";

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far because the writer thread was behind.
pub(crate) fn dropped_lines() -> u64 {
    DROPPED.load(Relaxed)
}

/// Whether `--log-level` parses as a filter (a level or directives); for clap.
pub(crate) fn parse_level(text: &str) -> Result<String, String> {
    EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("{e} (use e.g. info, debug, or info,tessera::access=off)"))
}

/// The lines logged and not yet written.
#[derive(Debug, Default)]
struct Pending {
    lines: Mutex<Vec<u8>>,
    stop: AtomicBool,
}

impl Pending {
    /// Append one whole line, or drop and count it when the writer is [`LOG_BUFFER_BYTES`] behind.
    fn push(&self, line: &[u8]) {
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() + line.len() <= LOG_BUFFER_BYTES {
                lines.extend_from_slice(line);
                return;
            }
        }
        DROPPED.fetch_add(1, Relaxed);
    }

    #[cfg(test)]
    fn take(&self) -> Vec<u8> {
        self.lines.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }

    /// The lines logged so far, exchanged for `spare` (emptied first): the loggers go on in the
    /// writer's previous buffer, its capacity kept, instead of growing a new one after every write.
    fn swap(&self, spare: &mut Vec<u8>) {
        spare.clear();
        if let Ok(mut lines) = self.lines.lock() {
            std::mem::swap(&mut *lines, spare);
        }
    }
}

/// A buffer larger than this (a burst) is not kept for the next round.
const KEEP_BYTES: usize = 256 * 1024;

/// What the formatter writes each event into (one `write_all` per event, so a line is never
/// split between two writes of the thread).
#[derive(Clone, Debug)]
struct Buffered(Arc<Pending>);

impl Write for Buffered {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = Buffered;
    fn make_writer(&'a self) -> Buffered {
        self.clone()
    }
}

/// The log writer thread; dropping it writes what is still buffered and stops the thread.
#[must_use = "dropping it stops the log writer"]
#[derive(Debug)]
pub struct Logging {
    pending: Option<Arc<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Logging {
    fn drop(&mut self) {
        if let Some(pending) = &self.pending {
            pending.stop.store(true, Relaxed);
            if let Some(thread) = self.thread.take() {
                thread.thread().unpark();
                let _ = thread.join();
            }
            write_out(pending, &mut Vec::new());
        }
    }
}

/// Write what was logged, through `spare` (see [`Pending::swap`]).
fn write_out(pending: &Pending, spare: &mut Vec<u8>) {
    pending.swap(spare);
    if !spare.is_empty() {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(spare);
        let _ = err.flush();
    }
    if spare.capacity() > KEEP_BYTES {
        *spare = Vec::new();
    }
}

/// Start logging for the process: standard error, `format`, the filter from `level`, else
/// `RUST_LOG`, else [`DEFAULT_LEVEL`]. Once per process: a second call (tests that serve twice
/// in one process) keeps the first and returns a handle that holds nothing.
pub fn init(format: LogFormat, level: Option<&str>) -> Logging {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let (filter, bad_env) = match (level, from_env.as_deref()) {
        (Some(l), _) => (EnvFilter::builder().parse_lossy(l), None),
        (None, Some(env)) => match EnvFilter::builder().parse(env) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(DEFAULT_LEVEL), Some(e.to_string())),
        },
        (None, None) => (EnvFilter::new(DEFAULT_LEVEL), None),
    };
    let pending = Arc::new(Pending::default());
    let writer = Buffered(pending.clone());
    let builder = tracing_subscriber::fmt().with_writer(writer).with_env_filter(filter);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init()
        }
    };
    if installed.is_err() {
        return Logging { pending: None, thread: None };
    }
    // Asked once: the access line is written by `access` (not through `fmt`), when enabled.
    if tracing::enabled!(target: access::ACCESS_TARGET, tracing::Level::INFO) {
        let _ = access::ACCESS.set(access::AccessLog { pending: pending.clone(), format });
    }
    let drain = pending.clone();
    let thread = std::thread::Builder::new().name("tessera-log".into()).spawn(move || {
        let mut spare = Vec::new();
        while !drain.stop.load(Relaxed) {
            std::thread::park_timeout(FLUSH_EVERY);
            write_out(&drain, &mut spare);
        }
        write_out(&drain, &mut spare);
    });
    if let Some(e) = bad_env {
        tracing::warn!("RUST_LOG does not parse ({e}); logging at {DEFAULT_LEVEL}");
    }
    // Without a thread, what fits in the buffer is written as the process ends.
    Logging { pending: Some(pending), thread: thread.ok() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_and_counts_lines_without_waiting() {
        let pending = Arc::new(Pending::default());
        let mut w = Buffered(pending.clone());
        let line = vec![b'x'; 1024];
        let before = dropped_lines();
        for _ in 0..(LOG_BUFFER_BYTES / 1024 + 10) {
            w.write_all(&line).unwrap();
        }
        assert_eq!(dropped_lines() - before, 10);
        assert_eq!(pending.take().len(), LOG_BUFFER_BYTES);
        // Written out: room again.
        w.write_all(&line).unwrap();
        assert_eq!(pending.take().len(), 1024);
        assert_eq!(dropped_lines() - before, 10);
    }
}
