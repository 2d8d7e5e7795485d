//! Logs: `tracing` events on standard error, as text lines or JSON lines (`--log-format`),
//! filtered by `--log-level` or `RUST_LOG`, written by a thread of their own.
//!
//! No request waits on the log, and no log line wakes a thread: events are formatted on the
//! thread that emits them and appended to that thread's own in-memory buffer (its own mutex,
//! which only the writer ever contends for); a writer thread takes every thread's lines every
//! [`FLUSH_EVERY`] and writes them to standard error in one call. A thread's lines stay in the
//! order it logged them; lines of different threads are interleaved a flush at a time (each
//! carries its time). One shared buffer was measured first: two workers appending to it pass its
//! lock and its last cache line back and forth on every request. A thread's buffer holds at most
//! [`LOG_BUFFER_BYTES`]; when the writer falls behind (a slow pipe, a stopped terminal), new lines
//! are dropped, never waited for, and counted (`tessera_log_lines_dropped_total` in `/metrics`).
//! tracing-appender's non-blocking writer was measured before that: its channel wakes the writer
//! for each line, which cost `/v1/verify` a quarter of its throughput with the access log on
//! (docs/BENCHMARKS.md).
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

mod access;
pub(crate) use access::{enabled as access_enabled, write as access, AccessLine};

/// Bytes of log lines one thread may be ahead of the writer thread by; past this, its lines are
/// dropped and counted (about 8,000 access lines: 160 ms of a worker verifying 50,000 requests a
/// second).
pub const LOG_BUFFER_BYTES: usize = 2 * 1024 * 1024;

/// Bytes of log lines all threads together may be ahead of the writer thread by (the memory
/// their buffers hold); past this, lines that would grow a buffer are dropped and counted.
pub const LOG_BUFFER_TOTAL: usize = 8 * 1024 * 1024;

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

/// One thread's lines not yet written.
type Lines = Arc<Mutex<Vec<u8>>>;

/// The lines logged and not yet written: one buffer per thread that has logged.
#[derive(Debug)]
struct Pending {
    /// Which `Pending` a thread's buffer belongs to (tests make their own).
    id: u64,
    /// Every thread's buffer; a buffer only this list still holds belongs to a thread that ended
    /// and goes once written out.
    threads: Mutex<Vec<Lines>>,
    /// Lines of a thread whose own buffer is gone (logging while the thread ends).
    orphans: Mutex<Vec<u8>>,
    /// Bytes the buffers hold (their capacity), at most [`LOG_BUFFER_TOTAL`].
    reserved: AtomicUsize,
    stop: AtomicBool,
}

impl Default for Pending {
    fn default() -> Pending {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Pending {
            id: NEXT.fetch_add(1, Relaxed),
            threads: Mutex::default(),
            orphans: Mutex::default(),
            reserved: AtomicUsize::new(0),
            stop: AtomicBool::default(),
        }
    }
}

thread_local! {
    /// This thread's buffer, and the [`Pending`] it belongs to.
    static MINE: std::cell::RefCell<Option<(u64, Lines)>> = const { std::cell::RefCell::new(None) };
}

impl Pending {
    /// Append `line` to `lines` if it stays within [`LOG_BUFFER_BYTES`], and, when the buffer has
    /// to grow, within what is left of [`LOG_BUFFER_TOTAL`] (the one shared counter is touched
    /// only when a buffer grows, not for every line).
    fn append(&self, lines: &Mutex<Vec<u8>>, line: &[u8]) -> bool {
        let Ok(mut lines) = lines.lock() else { return false };
        let need = lines.len() + line.len();
        if need > LOG_BUFFER_BYTES {
            return false;
        }
        let had = lines.capacity();
        if need > had {
            let want = need.max(2 * had).clamp(1024, LOG_BUFFER_BYTES);
            if self.reserved.fetch_add(want - had, Relaxed) + (want - had) > LOG_BUFFER_TOTAL {
                self.reserved.fetch_sub(want - had, Relaxed);
                return false;
            }
            let len = lines.len();
            lines.reserve_exact(want - len);
            // The allocator may round up: count what the buffer really holds.
            self.reserved.fetch_add(lines.capacity() - want, Relaxed);
        }
        lines.extend_from_slice(line);
        true
    }

    /// Give `lines`' memory back to the shared budget (the buffer is emptied).
    fn release(&self, lines: &mut Vec<u8>) {
        self.reserved.fetch_sub(lines.capacity(), Relaxed);
        *lines = Vec::new();
    }

    /// Append one whole line to this thread's buffer, or drop and count it when the writer is
    /// [`LOG_BUFFER_BYTES`] behind this thread.
    fn push(&self, line: &[u8]) {
        let me = self.id;
        let done = MINE
            .try_with(|mine| {
                let Ok(mut mine) = mine.try_borrow_mut() else { return self.append(&self.orphans, line) };
                let lines = match &*mine {
                    Some((owner, lines)) if *owner == me => lines,
                    _ => {
                        let lines = Lines::default();
                        if let Ok(mut threads) = self.threads.lock() {
                            threads.push(Arc::clone(&lines));
                        }
                        &mine.insert((me, lines)).1
                    }
                };
                self.append(lines, line)
            })
            .unwrap_or_else(|_| self.append(&self.orphans, line));
        if !done {
            DROPPED.fetch_add(1, Relaxed);
        }
    }

    #[cfg(test)]
    fn take(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.drain(&mut out);
        out
    }

    /// Every thread's lines so far, moved into `out` (emptied first). Each thread keeps its
    /// buffer's capacity (up to [`KEEP_BYTES`]) for the next round, so a steady load allocates
    /// nothing; buffers of threads that ended are dropped once emptied.
    fn drain(&self, out: &mut Vec<u8>) {
        out.clear();
        if let Ok(mut threads) = self.threads.lock() {
            threads.retain(|lines| {
                let alive = Arc::strong_count(lines) > 1;
                if let Ok(mut lines) = lines.lock() {
                    out.extend_from_slice(&lines);
                    lines.clear();
                    if !alive || lines.capacity() > KEEP_BYTES {
                        self.release(&mut lines);
                    }
                }
                alive
            });
        }
        if let Ok(mut orphans) = self.orphans.lock() {
            out.extend_from_slice(&orphans);
            self.release(&mut orphans);
        }
    }
}

/// A buffer larger than this (a burst) is not kept for the next round: a worker at 50,000
/// requests a second fills about 450 KiB between two flushes.
const KEEP_BYTES: usize = 1024 * 1024;

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

/// Write what was logged, through `spare` (see [`Pending::drain`]).
fn write_out(pending: &Pending, spare: &mut Vec<u8>) {
    pending.drain(spare);
    if !spare.is_empty() {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(spare);
        let _ = err.flush();
    }
    // What every thread logged in one round: kept at the size of a few busy threads' buffers.
    if spare.capacity() > 4 * KEEP_BYTES {
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

    /// The tests that count dropped lines (a process-wide counter) run one at a time.
    static DROPS: Mutex<()> = Mutex::new(());

    #[test]
    fn a_full_buffer_drops_and_counts_lines_without_waiting() {
        let _serial = DROPS.lock().unwrap_or_else(|e| e.into_inner());
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

    #[test]
    fn each_thread_keeps_its_order_and_an_ended_threads_lines_are_written_once() {
        let pending = Arc::new(Pending::default());
        let line = |t: usize, i: usize| format!("thread {t} line {i}\n");
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let p = Arc::clone(&pending);
                std::thread::spawn(move || (0..500).for_each(|i| p.push(line(t, i).as_bytes())))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        // This thread logs too, into a buffer of its own.
        pending.push(b"main\n");
        let out = String::from_utf8(pending.take()).unwrap();
        for t in 0..3 {
            let mine: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("thread {t} "))).collect();
            let expected: Vec<String> = (0..500).map(|i| line(t, i).trim_end().to_owned()).collect();
            assert_eq!(mine, expected, "thread {t}: every line, once, in its order");
        }
        assert_eq!(out.lines().filter(|l| *l == "main").count(), 1);
        // The ended threads' buffers are gone; this thread's stays, empty.
        assert_eq!(pending.threads.lock().unwrap().len(), 1);
        assert!(pending.take().is_empty());
    }

    #[test]
    fn all_threads_together_stay_within_the_total_and_give_it_back() {
        let _serial = DROPS.lock().unwrap_or_else(|e| e.into_inner());
        let pending = Arc::new(Pending::default());
        let before = dropped_lines();
        // Six threads each log 1.5 MiB while nothing is written: 9 MiB asked, 8 MiB allowed.
        let per_thread = 3 * LOG_BUFFER_BYTES / 4 / 1024;
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let p = Arc::clone(&pending);
                std::thread::spawn(move || {
                    (0..per_thread).for_each(|_| p.push(&[b'x'; 1024]));
                    assert!(p.reserved.load(Relaxed) <= LOG_BUFFER_TOTAL);
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(pending.reserved.load(Relaxed) <= LOG_BUFFER_TOTAL);
        let dropped = dropped_lines() - before;
        assert!(dropped > 0, "9 MiB of lines cannot all fit in 8 MiB");
        let written = pending.take();
        assert_eq!(written.len() as u64 + dropped * 1024, 6 * per_thread as u64 * 1024);
        // The threads ended: their buffers and their share of the total are gone.
        assert_eq!(pending.reserved.load(Relaxed), 0);
        assert!(pending.threads.lock().unwrap().is_empty());
    }
}
