//! Logs: `tracing` events on standard error, as text lines or JSON lines (`--log-format`),
//! filtered by `--log-level` or `RUST_LOG`, written by a thread of their own.
//!
//! No request waits on the log: events are formatted on the thread that emits them and queued
//! to a writer thread (tracing-appender's non-blocking writer) that writes through a buffer,
//! flushed whenever the queue is empty. The queue holds at most [`LOG_QUEUE_LINES`] lines; when
//! the writer falls behind (a slow pipe, a stopped terminal), new lines are dropped, never
//! waited for, and counted (`tessera_log_lines_dropped_total` in `/metrics`).
//!
//! The filter: `--log-level` (or `TESSERA_LOG_LEVEL`) when given, else `RUST_LOG`, else `info`.
//! Both take a level or `RUST_LOG`-style directives (`info,tessera::access=off`). Only `tracing`
//! events are logged: the `log` records some dependencies write (tokio-postgres's statements and
//! their parameters at debug) are not routed here.

use std::io::BufWriter;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Log lines the writer thread may be behind by; past this, lines are dropped and counted.
pub const LOG_QUEUE_LINES: usize = 16_384;

/// The filter used when neither `--log-level` nor `RUST_LOG` is set.
pub(crate) const DEFAULT_LEVEL: &str = "info";

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because the writer thread was behind.
pub(crate) fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Whether `--log-level` parses as a filter (a level or directives); for clap.
pub(crate) fn parse_level(text: &str) -> Result<String, String> {
    EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("{e} (use e.g. info, debug, or info,tessera::access=off)"))
}

/// The log writer thread; dropping it writes what is still queued.
#[must_use = "dropping it stops the log writer"]
#[derive(Debug)]
pub struct Logging {
    _guard: Option<WorkerGuard>,
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
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("tessera-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let counter = writer.error_counter();
    let builder = tracing_subscriber::fmt().with_writer(writer).with_env_filter(filter);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init()
        }
    };
    if installed.is_err() {
        return Logging { _guard: None };
    }
    let _ = DROPPED.set(counter);
    if let Some(e) = bad_env {
        tracing::warn!("RUST_LOG does not parse ({e}); logging at {DEFAULT_LEVEL}");
    }
    Logging { _guard: Some(guard) }
}
