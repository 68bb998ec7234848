//! The server's log output: the tracing subscriber (text or JSON, filtered by `RUST_LOG`) behind a non-blocking
//! writer, and the access log's one line per request.
//!
//! The access line is the one log line every request makes. Through tracing it cost more CPU than serving a
//! session lookup from the cache (field visitors, `core::fmt` per field, a span made only to carry the request
//! id; see BENCHMARKS.md). When the output is piped (no colours), the line is therefore written by hand, in
//! exactly the shape the subscriber gives it (a test compares the two byte for byte), into its thread's buffer,
//! which goes to the same writer in batches (`batches.rs`). On a terminal, and when logging was not set up here (tests, embedders), it goes
//! through tracing as any other event. Either way the filter decides: the line is written only when an INFO event
//! of the target `agent_sessions_server::access` is enabled (`RUST_LOG=warn` turns it off).

mod batches;

use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use poem::http::HeaderValue;
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format` / `LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The log filter without `RUST_LOG`. sqlx's own warnings are left out: during a database outage its pool
/// warns once per connection it finds broken and per slow acquisition, where the store already logs the
/// outage once (and pool saturation once per burst); `RUST_LOG=info,sqlx=warn` brings them back.
pub const DEFAULT_FILTER: &str = "info,sqlx=error";

/// The target of the access line and of the request's span: `RUST_LOG=info,agent_sessions_server::access=warn`
/// turns the access log off and keeps the rest.
const TARGET: &str = "agent_sessions_server::access";

/// Where hand-written access lines go, once [`init`] has set up a piped output.
static DIRECT: OnceLock<Direct> = OnceLock::new();

struct Direct {
    format: LogFormat,
    batches: batches::Batches,
}

/// Kept while the server runs: when dropped, writes the access lines still gathered, then (the writer's own
/// guard) every line still queued.
pub struct LogGuard {
    _writer: WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(direct) = DIRECT.get() {
            direct.batches.flush();
        }
    }
}

/// Sets up logging to standard output in `format`, filtered by `RUST_LOG` (else [`DEFAULT_FILTER`]). Lines are
/// written by a thread of their own; the returned guard writes those still queued when dropped.
pub fn init(format: LogFormat) -> LogGuard {
    use std::io::IsTerminal;
    use std::os::fd::AsFd;
    let terminal = std::io::stdout().is_terminal();
    // Standard output's own handle flushes at every newline; a duplicate of its descriptor behind a buffer
    // lets the writer thread flush once per batch (when its queue is empty).
    let out: Box<dyn std::io::Write + Send + Sync> =
        match std::io::stdout().as_fd().try_clone_to_owned() {
            Ok(fd) if !terminal => Box::new(std::io::BufWriter::new(std::fs::File::from(fd))),
            _ => Box::new(std::io::stdout()),
        };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(out);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    if !terminal && DIRECT.set(direct(format, writer.clone())).is_ok() {
        let flusher = std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(|| loop {
                std::thread::sleep(batches::FLUSH_EVERY);
                if let Some(direct) = DIRECT.get() {
                    direct.batches.flush();
                }
            });
        if let Err(e) = flusher {
            eprintln!("cannot start the log flusher thread: {e}");
        }
    }
    let _ = subscriber(format, terminal, filter, writer).try_init();
    LogGuard { _writer: guard }
}

fn direct(format: LogFormat, writer: NonBlocking) -> Direct {
    let sink = move |lines: &[u8]| {
        // Lossless: the writer thread takes every batch (it blocks this call only when its queue is full).
        let _ = writer.clone().write_all(lines);
    };
    Direct {
        format,
        batches: batches::Batches::new(Box::new(sink)),
    }
}

/// The subscriber of [`init`], writing to `writer`.
fn subscriber<W>(
    format: LogFormat,
    ansi: bool,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            logs.json()
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Text => Box::new(logs.with_ansi(ansi).finish()),
    }
}

/// The request's span, which puts its id in every log line made while serving it.
pub fn request_span(id: &HeaderValue) -> tracing::Span {
    tracing::info_span!(target: TARGET, "request", request_id = id.to_str().unwrap_or_default())
}

/// What the access line says of a request (never a key, token or query).
pub struct AccessLine<'a> {
    pub request_id: &'a HeaderValue,
    pub method: &'a str,
    pub route: &'a str,
    pub operation: &'a str,
    pub status: u16,
    pub took: Duration,
    pub principal: &'a str,
}

/// Writes the request's access line. `span` is the request's span when it has one (the lane in front of the
/// middleware makes none unless the line goes through tracing).
pub fn access(line: &AccessLine<'_>, span: Option<&tracing::Span>) {
    let Some(direct) = DIRECT.get() else {
        let made;
        let span = match span {
            Some(span) => span,
            None => {
                made = request_span(line.request_id);
                &made
            }
        };
        span.in_scope(|| traced(line));
        return;
    };
    let enabled = match span {
        Some(span) => span.in_scope(|| tracing::enabled!(target: TARGET, tracing::Level::INFO)),
        None => tracing::enabled!(target: TARGET, tracing::Level::INFO),
    };
    if !enabled {
        return;
    }
    thread_local! {
        static MINE: std::cell::OnceCell<Arc<Mutex<Vec<u8>>>> = const { std::cell::OnceCell::new() };
    }
    MINE.with(|mine| {
        let mine = mine.get_or_init(|| direct.batches.buffer());
        let at = wall_time();
        direct.batches.append(mine, |buf| match direct.format {
            LogFormat::Text => write_text(buf, at, line),
            LogFormat::Json => write_json(buf, at, line),
        });
    });
}

/// The access line as a tracing event (inside the request's span).
fn traced(line: &AccessLine<'_>) {
    tracing::info!(
        target: TARGET,
        method = line.method,
        route = line.route,
        operation = line.operation,
        status = line.status,
        duration_ms = millis(line.took),
        principal = line.principal,
        "request"
    )
}

/// Whole microseconds: a computed float prints up to seventeen digits, all noise past the third.
fn millis(took: Duration) -> f64 {
    took.as_micros() as f64 / 1000.0
}

/// Log lines carry the wall time, as the subscriber's own lines do: the service's clock is for sessions (and is
/// a `MockClock` in tests, where a log line still tells when it was written).
#[allow(clippy::disallowed_methods)]
fn wall_time() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// The fmt subscriber's timestamp: RFC 3339 in UTC with microseconds.
fn stamp(buf: &mut Vec<u8>, at: chrono::DateTime<chrono::Utc>) {
    use chrono::Timelike;
    match crate::domain::IsoStamp::of(at) {
        crate::domain::IsoStamp::Short(bytes) => {
            buf.extend_from_slice(&bytes[..20]);
            let micros = at.nanosecond() / 1_000;
            buf.extend_from_slice(&[
                b'0' + (micros / 100_000) as u8,
                b'0' + (micros / 10_000 % 10) as u8,
                b'0' + (micros / 1_000 % 10) as u8,
                b'0' + (micros / 100 % 10) as u8,
                b'0' + (micros / 10 % 10) as u8,
                b'0' + (micros % 10) as u8,
                b'Z',
            ]);
        }
        crate::domain::IsoStamp::Long(_) => {
            let _ = write!(
                buf,
                "{}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
    }
}

/// `duration_ms` as tracing prints the float (shortest form that reads back, at least one decimal).
fn duration(buf: &mut Vec<u8>, took: Duration) {
    let micros = took.as_micros();
    let _ = write!(buf, "{}.", micros / 1000);
    let frac = (micros % 1000) as u32;
    if frac == 0 {
        buf.push(b'0');
        return;
    }
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let keep = if frac.is_multiple_of(100) {
        1
    } else if frac.is_multiple_of(10) {
        2
    } else {
        3
    };
    buf.extend_from_slice(&digits[..keep]);
}

/// A string field as the text format shows it (`Debug`: quoted, escaped).
fn quoted(buf: &mut Vec<u8>, value: &str) {
    if value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'"');
    } else {
        let _ = write!(buf, "{value:?}");
    }
}

fn write_text(buf: &mut Vec<u8>, at: chrono::DateTime<chrono::Utc>, line: &AccessLine<'_>) {
    stamp(buf, at);
    buf.extend_from_slice(b"  INFO request{request_id=");
    quoted(buf, line.request_id.to_str().unwrap_or_default());
    buf.extend_from_slice(b"}: ");
    buf.extend_from_slice(TARGET.as_bytes());
    buf.extend_from_slice(b": request method=");
    quoted(buf, line.method);
    buf.extend_from_slice(b" route=");
    quoted(buf, line.route);
    buf.extend_from_slice(b" operation=");
    quoted(buf, line.operation);
    let _ = write!(buf, " status={} duration_ms=", line.status);
    duration(buf, line.took);
    buf.extend_from_slice(b" principal=");
    quoted(buf, line.principal);
    buf.push(b'\n');
}

fn json_str(buf: &mut Vec<u8>, value: &str) {
    let _ = serde_json::to_writer(&mut *buf, value);
}

fn write_json(buf: &mut Vec<u8>, at: chrono::DateTime<chrono::Utc>, line: &AccessLine<'_>) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    stamp(buf, at);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"method\":");
    json_str(buf, line.method);
    buf.extend_from_slice(b",\"route\":");
    json_str(buf, line.route);
    buf.extend_from_slice(b",\"operation\":");
    json_str(buf, line.operation);
    let _ = write!(buf, ",\"status\":{},\"duration_ms\":", line.status);
    duration(buf, line.took);
    buf.extend_from_slice(b",\"principal\":");
    json_str(buf, line.principal);
    buf.extend_from_slice(b"},\"target\":");
    json_str(buf, TARGET);
    buf.extend_from_slice(b",\"span\":{\"request_id\":");
    json_str(buf, line.request_id.to_str().unwrap_or_default());
    buf.extend_from_slice(b",\"name\":\"request\"}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the subscriber of `init` writes for the line, inside the request's span.
    fn through_tracing(format: LogFormat, line: &AccessLine<'_>) -> String {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = subscriber(format, false, EnvFilter::new("info"), move || sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            request_span(line.request_id).in_scope(|| traced(line))
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn by_hand(format: LogFormat, line: &AccessLine<'_>) -> String {
        let mut buf = Vec::new();
        let at = wall_time();
        match format {
            LogFormat::Text => write_text(&mut buf, at, line),
            LogFormat::Json => write_json(&mut buf, at, line),
        }
        String::from_utf8(buf).unwrap()
    }

    /// The line without its timestamp, which differs between two writes.
    fn untimed(format: LogFormat, line: &str) -> String {
        match format {
            LogFormat::Text => line.split_once(' ').unwrap().1.to_string(),
            LogFormat::Json => {
                let start = line.find("\"timestamp\":\"").unwrap();
                let end = start + 13 + line[start + 13..].find('"').unwrap();
                format!("{}{}", &line[..start], &line[end + 2..])
            }
        }
    }

    fn is_stamp(s: &str) -> bool {
        s.len() == 27
            && chrono::DateTime::parse_from_rfc3339(s).is_ok()
            && s.as_bytes()[19] == b'.'
            && s.ends_with('Z')
    }

    /// The hand-written line is the subscriber's, byte for byte (timestamps aside, whose form is checked
    /// apart): both formats, request ids that need escaping, durations of every shape.
    #[test]
    fn hand_written_access_lines_are_the_subscribers() {
        let ids = [
            HeaderValue::from_static("0192d1c4-5a6b-7c8d-9e0f-a1b2c3d4e5f6"),
            HeaderValue::from_static("with \"quotes\" and \\ and spaces"),
            HeaderValue::from_static("~`!@#$%^&*()_+{}|:<>?"),
        ];
        let durations = [
            0,
            1,
            10,
            100,
            999,
            1_000,
            1_200,
            1_230,
            1_234,
            12_345_678,
            123_456_789_012,
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            for (id, micros) in ids
                .iter()
                .zip(durations.iter().cycle())
                .chain(durations.iter().map(|m| (&ids[0], m)))
            {
                let line = AccessLine {
                    request_id: id,
                    method: "DELETE",
                    route: "/api/messaging/sessions/{sessionId}",
                    operation: "deleteSession",
                    status: 204,
                    took: Duration::from_micros(*micros),
                    principal: "session_token",
                };
                let traced = through_tracing(format, &line);
                let written = by_hand(format, &line);
                assert_eq!(
                    untimed(format, &written),
                    untimed(format, &traced),
                    "{format:?}"
                );
                let stamp = match format {
                    LogFormat::Text => written.split_once(' ').unwrap().0.to_string(),
                    LogFormat::Json => serde_json::from_str::<serde_json::Value>(&written).unwrap()
                        ["timestamp"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                };
                assert!(is_stamp(&stamp), "{stamp}");
            }
        }
    }

    #[test]
    fn stamps_have_microseconds() {
        let at = chrono::DateTime::from_timestamp(1_764_494_505, 123_456_789).unwrap();
        let mut buf = Vec::new();
        stamp(&mut buf, at);
        assert_eq!(buf, b"2025-11-30T09:21:45.123456Z");
        let mut buf = Vec::new();
        stamp(
            &mut buf,
            chrono::DateTime::from_timestamp(1_764_494_505, 7_000).unwrap(),
        );
        assert_eq!(buf, b"2025-11-30T09:21:45.000007Z");
    }
}
