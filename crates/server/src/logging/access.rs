//! The access line, written by hand instead of through `tracing-subscriber`'s `fmt` layer.
//!
//! One line per request is the hot path of the log: formatted by `fmt` (a field visitor behind
//! dynamic dispatch, the timestamp's calendar arithmetic, a fresh line buffer per event) it cost
//! `/v1/verify` about a quarter of its throughput (docs/BENCHMARKS.md). Here the fields are fixed,
//! so the line is written straight into a buffer kept per thread, the timestamp's date and time
//! are computed once per second per thread, and only the strings that may need it are escaped.
//! The finished line goes into the same bounded buffer as every other log line (dropped and
//! counted when the writer is behind). The output is byte for byte what `fmt` wrote for the same
//! event (a unit test compares the two), in both formats.
//!
//! Whether the line is written at all is decided once, when logging starts: the filter
//! (`--log-level` / `RUST_LOG`) is asked whether target [`ACCESS_TARGET`] at info is enabled.

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Pending;
use crate::config::LogFormat;
pub(crate) use crate::http::request_id::ACCESS_TARGET;

/// Where access lines go, set once by [`super::init`] when the filter enables them.
#[derive(Debug)]
pub(super) struct AccessLog {
    pub(super) pending: Arc<Pending>,
    pub(super) format: LogFormat,
}

pub(super) static ACCESS: OnceLock<AccessLog> = OnceLock::new();

/// Whether access lines are written (decided once, at the start of logging).
pub(crate) fn enabled() -> bool {
    ACCESS.get().is_some()
}

/// The fields of one access line; `None` fields are left out of the line.
#[derive(Clone, Copy)]
pub(crate) struct AccessLine<'a> {
    pub(crate) method: &'a str,
    pub(crate) route: &'a str,
    pub(crate) status: u16,
    pub(crate) elapsed: Duration,
    /// When the answer was ready (the end of `elapsed`): the line's time.
    pub(crate) ended: Instant,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) subject: Option<&'a str>,
    pub(crate) tid: Option<&'a dyn Display>,
    pub(crate) client: Option<IpAddr>,
}

/// Write `line` to the log, if access lines are enabled.
pub(crate) fn write(line: &AccessLine<'_>) {
    let Some(log) = ACCESS.get() else { return };
    thread_local!(static BUF: RefCell<(Vec<u8>, Clock)> = RefCell::new((Vec::with_capacity(512), Clock::default())));
    BUF.with(|b| {
        let Ok(mut b) = b.try_borrow_mut() else { return };
        let (buf, clock) = &mut *b;
        buf.clear();
        let now = clock.wall(line.ended);
        format(buf, clock, now, log.format, line);
        log.pending.push(buf);
        // A rare huge line (a long subject) does not keep its memory for the thread's life.
        if buf.capacity() > 16 * 1024 {
            *buf = Vec::with_capacity(512);
        }
    });
}

/// The date and time to the second, as `fmt` writes it (`2026-12-05T07:20:18.`), for the second
/// it was last computed for; and the wall clock's reading at an instant of the last second.
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    prefix: [u8; 20],
    base: Option<(Instant, SystemTime)>,
}

impl Clock {
    /// The wall-clock time at `at`: the monotonic clock's distance from a reading of both
    /// clocks taken at most a second before, so that a line costs no clock read of its own (the
    /// middleware read `at` for the duration). The wall clock is read again once a second, or
    /// when `at` is before the last reading; a step of the wall clock shows within a second.
    fn wall(&mut self, at: Instant) -> SystemTime {
        match self.base {
            Some((i, s)) if at >= i && at - i < Duration::from_secs(1) => s + (at - i),
            _ => {
                let s = SystemTime::now();
                self.base = Some((at, s));
                s
            }
        }
    }

    /// `now` as RFC 3339 in UTC with microseconds and `Z`, the form of `fmt`'s `SystemTime`.
    fn stamp(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            let t = i64::try_from(second)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let mut p = Vec::with_capacity(20);
            let _ = write!(
                p,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            if p.len() != self.prefix.len() {
                // A year past 9999: not cached, written as it is.
                out.extend_from_slice(&p);
                digits(out, since.subsec_micros(), 6);
                out.push(b'Z');
                return;
            }
            self.prefix.copy_from_slice(&p);
            self.second = Some(second);
        }
        out.extend_from_slice(&self.prefix);
        digits(out, since.subsec_micros(), 6);
        out.push(b'Z');
    }
}

/// `n` in exactly `width` decimal digits (`n < 10^width`).
fn digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for slot in out[start..].iter_mut().rev() {
        // `n % 10` is a digit.
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `n` in decimal, as `Display` writes it.
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        // `n % 10` is a digit.
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// `ms` (a whole number of microseconds divided by 1000, as [`format`] computes it) as `{:?}`
/// writes it (`1.235`, `0.5`, `2000.0`) without the float formatter: such a value under 10^12 ms
/// is the double nearest a decimal of at most 15 significant digits, so its shortest form is
/// that decimal. Anything else goes through `{:?}`.
fn debug_ms(out: &mut Vec<u8>, ms: f64) {
    let micros = ms * 1e3;
    if !(0.0..1e15).contains(&micros) || micros.round() != micros {
        let _ = write!(out, "{ms:?}");
        return;
    }
    // Whole, non-negative and below 10^15: exact in a u64.
    let micros = micros as u64;
    decimal(out, micros / 1000);
    out.push(b'.');
    let frac = micros % 1000;
    let digits = [b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
    let mut len = 3;
    while len > 1 && digits[len - 1] == b'0' {
        len -= 1;
    }
    out.extend_from_slice(&digits[..len]);
}

/// An address as `Display` writes it; IPv4's four numbers without the formatter.
fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            decimal(out, a.into());
            for n in [b, c, d] {
                out.push(b'.');
                decimal(out, n.into());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Bytes that go into a quoted string unchanged in both formats: printable ASCII but `"` and `\`.
fn plain(s: &[u8]) -> bool {
    // A table: one load per byte (this runs over every string of every access line).
    const PLAIN: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0x20;
        while b < 0x7f {
            t[b] = b != b'"' as usize && b != b'\\' as usize;
            b += 1;
        }
        t
    };
    s.iter().all(|&b| PLAIN[usize::from(b)])
}

/// `s` quoted as `fmt`'s text format writes a string field (Rust's `Debug` of `str`).
fn text_str(out: &mut Vec<u8>, s: &str) {
    if plain(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// `s` as a JSON string (serde_json's escaping, as `fmt`'s JSON format writes it).
fn json_str(out: &mut Vec<u8>, s: &str) {
    if plain(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// A `Display` value as a JSON string: written in place, escaped only if it has to be.
fn json_display(out: &mut Vec<u8>, v: &dyn Display) {
    out.push(b'"');
    let start = out.len();
    let _ = write!(out, "{v}");
    if !plain(&out[start..]) {
        let raw = String::from_utf8_lossy(&out[start..]).into_owned();
        out.truncate(start - 1);
        json_str(out, &raw);
        return;
    }
    out.push(b'"');
}

/// The whole line, newline included, as `fmt` wrote the same `tracing::info!` event.
fn format(out: &mut Vec<u8>, clock: &mut Clock, now: SystemTime, fmt: LogFormat, l: &AccessLine<'_>) {
    // `fmt` records the duration as an f64 of milliseconds rounded to the microsecond.
    let ms = (l.elapsed.as_secs_f64() * 1e6).round() / 1e3;
    match fmt {
        LogFormat::Text => {
            clock.stamp(out, now);
            out.extend_from_slice(b"  INFO ");
            out.extend_from_slice(ACCESS_TARGET.as_bytes());
            out.extend_from_slice(b": method=");
            text_str(out, l.method);
            out.extend_from_slice(b" route=");
            text_str(out, l.route);
            out.extend_from_slice(b" status=");
            decimal(out, u64::from(l.status));
            out.extend_from_slice(b" duration_ms=");
            debug_ms(out, ms);
            if let Some(id) = l.request_id {
                out.extend_from_slice(b" request_id=");
                text_str(out, id);
            }
            if let Some(s) = l.subject {
                out.extend_from_slice(b" subject=");
                text_str(out, s);
            }
            if let Some(t) = l.tid {
                let _ = write!(out, " tid={t}");
            }
            if let Some(c) = l.client {
                out.extend_from_slice(b" client=");
                ip(out, c);
            }
        }
        LogFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            clock.stamp(out, now);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"method\":");
            json_str(out, l.method);
            out.extend_from_slice(b",\"route\":");
            json_str(out, l.route);
            let _ = write!(out, ",\"status\":{},\"duration_ms\":", l.status);
            let _ = serde_json::to_writer(&mut *out, &ms);
            if let Some(id) = l.request_id {
                out.extend_from_slice(b",\"request_id\":");
                json_str(out, id);
            }
            if let Some(s) = l.subject {
                out.extend_from_slice(b",\"subject\":");
                json_str(out, s);
            }
            if let Some(t) = l.tid {
                out.extend_from_slice(b",\"tid\":");
                json_display(out, t);
            }
            if let Some(c) = l.client {
                out.extend_from_slice(b",\"client\":");
                json_display(out, &c);
            }
            out.extend_from_slice(b",\"target\":\"");
            out.extend_from_slice(ACCESS_TARGET.as_bytes());
            out.extend_from_slice(b"\"}");
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What `fmt` writes, captured for one event.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// The line `fmt` wrote for the event the middleware used to emit.
    fn through_fmt(format: LogFormat, l: &AccessLine<'_>) -> String {
        let cap = Capture::default();
        let builder = tracing_subscriber::fmt().with_writer(cap.clone());
        let emit = || {
            tracing::info!(
                target: ACCESS_TARGET,
                method = l.method,
                route = l.route,
                status = l.status,
                duration_ms = (l.elapsed.as_secs_f64() * 1e6).round() / 1e3,
                request_id = l.request_id,
                subject = l.subject,
                tid = l.tid.map(tracing::field::display),
                client = l.client.map(tracing::field::display),
            )
        };
        match format {
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), emit),
            LogFormat::Json => tracing::subscriber::with_default(
                builder.json().flatten_event(true).with_current_span(false).with_span_list(false).finish(),
                emit,
            ),
        }
        let bytes = cap.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn ours(format: LogFormat, now: SystemTime, l: &AccessLine<'_>) -> String {
        let mut out = Vec::new();
        format_line(&mut out, now, format, l);
        String::from_utf8(out).unwrap()
    }

    fn format_line(out: &mut Vec<u8>, now: SystemTime, fmt: LogFormat, l: &AccessLine<'_>) {
        format(out, &mut Clock::default(), now, fmt, l);
    }

    /// Both lines with their timestamps (the first field, in both formats) cut off.
    fn without_time(line: &str, format: LogFormat) -> String {
        match format {
            LogFormat::Text => line.split_once(' ').unwrap().1.to_owned(),
            LogFormat::Json => line.split_once("\",").unwrap().1.to_owned(),
        }
    }

    const SUBJECTS: &[&str] = &[
        "alice",
        "a\"b\\c",
        "tab\tnl\ncr\r nul\0 bell\u{7} del\u{7f}",
        "élise 日本 😀",
        "zero\u{200b}width \u{301}combining",
        "'single' {braces} /slash/",
        "",
    ];

    fn lines(subject: &'static str) -> Vec<AccessLine<'static>> {
        static TID: &str = "8f3a9c0de1b2";
        let full = AccessLine {
            method: "POST",
            route: "/v1/tokens/{id}/links",
            status: 201,
            elapsed: Duration::from_nanos(1_234_567),
            ended: Instant::now(),
            request_id: Some("r-1!~{}"),
            subject: Some(subject),
            tid: Some(&TID),
            client: Some("2001:db8::1".parse().unwrap()),
        };
        let bare = AccessLine {
            method: "GET",
            route: "unmatched",
            status: 404,
            elapsed: Duration::from_secs(2),
            ended: Instant::now(),
            request_id: None,
            subject: None,
            tid: None,
            client: None,
        };
        let odd = AccessLine {
            elapsed: Duration::ZERO,
            status: 599,
            client: Some("10.1.2.3".parse().unwrap()),
            ..full
        };
        vec![full, bare, odd]
    }

    #[test]
    fn the_line_is_what_fmt_wrote_in_both_formats() {
        for format in [LogFormat::Text, LogFormat::Json] {
            for subject in SUBJECTS {
                for l in lines(subject) {
                    let theirs = through_fmt(format, &l);
                    let ours = ours(format, SystemTime::now(), &l);
                    assert_eq!(without_time(&ours, format), without_time(&theirs, format), "{format:?}");
                    assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1, "{ours:?}");
                }
            }
        }
    }

    #[test]
    fn plain_is_printable_ascii_but_quote_and_backslash() {
        for b in 0..=255u8 {
            assert_eq!(plain(&[b]), (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\', "{b:#x}");
        }
        assert!(plain(b"POST /v1/verify 4f1c0e9a"));
        assert!(!plain("é".as_bytes()));
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_and_debug_write_them() {
        // What `format` computes: whole microseconds over 1000; then values it never makes.
        let mut values: Vec<f64> = (0..20_000u32).map(|us| f64::from(us) / 1e3).collect();
        values.extend(
            (0..2_000u64)
                .map(|i| (Duration::from_nanos(i * 7_919_993 + i * i).as_secs_f64() * 1e6).round() / 1e3),
        );
        values.extend([
            1e6,
            123_456.789,
            999_999_999.999,
            1e12,
            1e13,
            1e-7,
            0.0001,
            1.000_000_1,
            f64::NAN,
            -1.0,
        ]);
        for v in values {
            let mut out = Vec::new();
            debug_ms(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{v:?}"));
        }
        for n in [0u64, 1, 9, 10, 99, 100, 200, 404, 599, 65_535, u64::MAX] {
            let mut out = Vec::new();
            decimal(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
        for a in [
            "0.0.0.0",
            "10.1.2.3",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let a: IpAddr = a.parse().unwrap();
            let mut out = Vec::new();
            ip(&mut out, a);
            assert_eq!(String::from_utf8(out).unwrap(), a.to_string());
        }
    }

    #[test]
    fn json_lines_parse_and_keep_the_subject() {
        for subject in SUBJECTS {
            let l = lines(subject)[0];
            let v: serde_json::Value =
                serde_json::from_str(&ours(LogFormat::Json, SystemTime::now(), &l)).unwrap();
            assert_eq!(v["subject"], *subject);
            assert_eq!(v["tid"], "8f3a9c0de1b2");
            assert_eq!(v["client"], "2001:db8::1");
            assert_eq!(v["status"], 201);
            assert_eq!(v["duration_ms"], 1.235);
            assert_eq!(v["target"], ACCESS_TARGET);
        }
    }

    #[test]
    fn the_wall_clock_follows_the_instant_and_is_read_again_each_second() {
        let mut clock = Clock::default();
        let t0 = Instant::now();
        let before = SystemTime::now();
        let w0 = clock.wall(t0);
        assert!(w0 >= before && w0 <= SystemTime::now());
        // Within the second: the reading plus the monotonic distance, exactly.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(clock.wall(t1), w0 + Duration::from_millis(250));
        let t2 = t0 + Duration::from_micros(999_999);
        assert_eq!(clock.wall(t2), w0 + Duration::from_micros(999_999));
        // A second on, or an instant before the reading: the wall clock is read again.
        let later = t0 + Duration::from_secs(5);
        let w = clock.wall(later);
        assert!(w >= before && w <= SystemTime::now(), "read again, not {w0:?} + 5 s");
        assert_eq!(clock.base.map(|b| b.0), Some(later));
        let w = clock.wall(t0);
        assert!(w >= before && w <= SystemTime::now());
        assert_eq!(clock.base.map(|b| b.0), Some(t0));
    }

    #[test]
    fn timestamps_match_fmt_and_the_cache_follows_the_clock() {
        let mut clock = Clock::default();
        let at = |s: u64, us: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us);
        let mut stamp = |t| {
            let mut out = Vec::new();
            clock.stamp(&mut out, t);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(stamp(at(1_796_454_018, 302_396)), "2026-12-05T07:00:18.302396Z");
        assert_eq!(stamp(at(1_796_454_018, 7)), "2026-12-05T07:00:18.000007Z");
        assert_eq!(stamp(at(1_796_454_019, 0)), "2026-12-05T07:00:19.000000Z");
        assert_eq!(stamp(at(951_782_399, 999_999)), "2000-02-28T23:59:59.999999Z");
        assert_eq!(stamp(at(951_782_400, 0)), "2000-02-29T00:00:00.000000Z");
        // fmt's timestamp has the same shape (its value is the clock's, not compared).
        let line = ours(LogFormat::Text, SystemTime::now(), &lines("a")[1]);
        let theirs = through_fmt(LogFormat::Text, &lines("a")[1]);
        let shape = |s: &str| {
            s.split(' ')
                .next()
                .unwrap()
                .bytes()
                .map(|b| if b.is_ascii_digit() { b'0' } else { b })
                .collect::<Vec<u8>>()
        };
        assert_eq!(shape(&line), shape(&theirs));
    }
}
