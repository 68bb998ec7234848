//! Reply plumbing shared by the HTTP backends (`webhook`, `openai`): the incremental server-sent-events parser
//! fed with whatever byte slices the network delivers, the loop that drives it over a response body and the
//! whole-body read, both within the reply size limit, and the secret-free descriptions of HTTP failures.

use std::error::Error as _;

use futures::StreamExt;

use super::AgentError;

/// One dispatched SSE frame. `event` is `None` when the frame named none (the default `message` type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser. Bytes are buffered until a whole line is present and only complete lines are
/// decoded, so a read that ends inside a multi-byte UTF-8 character or between `\r` and `\n` loses nothing.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// How much of `buf` is already known to hold no line end.
    scanned: usize,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream; returns the frames they completed, in order. Each byte is scanned for
    /// a line end once, however many reads a long line arrives in: the work is linear in the stream's length.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        // `buf[..from]` is known to hold no line end (but for a `\r` waiting for its possible `\n`).
        let mut from = self.scanned;
        loop {
            let Some(offset) = self.buf[from..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
            else {
                from = self.buf.len();
                break;
            };
            let end = from + offset;
            let terminator = if self.buf[end] == b'\n' {
                1
            } else {
                match self.buf.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // A `\r` at the end of the buffer may be the first half of `\r\n`: wait for the next read,
                    // or the `\n` would later be taken for an empty line and end the frame early.
                    None => {
                        from = end;
                        break;
                    }
                }
            };
            let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
            self.line(&line, &mut out);
            start = end + terminator;
            from = start;
        }
        self.buf.drain(..start);
        self.scanned = from - start;
        out
    }

    /// Ends the stream: an unterminated last line and a frame without its closing blank line still count,
    /// since servers that close the connection right after their last frame often omit it.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.scanned = 0;
        let mut rest = std::mem::take(&mut self.buf);
        if rest.last() == Some(&b'\r') {
            rest.pop();
        }
        if !rest.is_empty() {
            let line = String::from_utf8_lossy(&rest).into_owned();
            self.line(&line, &mut out);
        }
        self.dispatch(&mut out);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            // `id` and `retry` only matter for reconnection, which one reply never does.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take().filter(|e| !e.is_empty());
        // Unlike browsers, a frame with only an `event:` line is kept: `event: done` alone is meaningful here.
        if self.data.is_empty() && event.is_none() {
            return;
        }
        let data = std::mem::take(&mut self.data).join("\n");
        out.push(SseEvent { event, data });
    }
}

/// What to do after an event.
pub enum Flow {
    Continue,
    Stop,
}

/// Reads `response`'s body as an SSE stream, handing each frame to `on_event` as soon as it is complete.
/// Stops at end of stream, when `on_event` says so, at its first error, or once the body passes `max_bytes`
/// (which also bounds the parser's buffer, however long a line the server sends). `who` names the backend in
/// errors.
pub async fn read_events<F>(
    response: reqwest::Response,
    who: &str,
    max_bytes: usize,
    mut on_event: F,
) -> Result<(), AgentError>
where
    F: FnMut(SseEvent) -> Result<Flow, AgentError>,
{
    let mut parser = SseParser::new();
    let mut body = response.bytes_stream();
    let mut left = max_bytes;
    while let Some(read) = body.next().await {
        let bytes = read
            .map_err(|e| AgentError::Failed(format!("{who} stream broke off: {}", describe(e))))?;
        left = left
            .checked_sub(bytes.len())
            .ok_or_else(|| BodyError::TooLarge(max_bytes).into_agent_error(who))?;
        for event in parser.push(&bytes) {
            if let Flow::Stop = on_event(event)? {
                return Ok(());
            }
        }
    }
    for event in parser.finish() {
        if let Flow::Stop = on_event(event)? {
            break;
        }
    }
    Ok(())
}

/// Why a whole response body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// The body is larger than this many bytes; reading stopped there.
    TooLarge(usize),
    /// The connection failed mid-body (described without secrets).
    Broken(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(max) => write!(f, "reply exceeded {max} bytes"),
            BodyError::Broken(why) => write!(f, "reply {why}"),
        }
    }
}

impl BodyError {
    pub fn into_agent_error(self, who: &str) -> AgentError {
        AgentError::Failed(format!("{who} {self}"))
    }
}

/// Reads a whole response body of at most `max_bytes`. A body announced as larger is refused before reading; one
/// that grows past the limit is dropped at the read that crosses it, which closes the connection.
pub async fn read_body(
    response: reqwest::Response,
    max_bytes: usize,
) -> Result<Vec<u8>, BodyError> {
    let announced = response.content_length().unwrap_or(0);
    if announced > max_bytes as u64 {
        return Err(BodyError::TooLarge(max_bytes));
    }
    let mut body = Vec::with_capacity(announced as usize);
    let mut stream = response.bytes_stream();
    while let Some(read) = stream.next().await {
        let bytes = read.map_err(|e| BodyError::Broken(describe(e)))?;
        if bytes.len() > max_bytes - body.len() {
            return Err(BodyError::TooLarge(max_bytes));
        }
        if body.capacity() - body.len() < bytes.len() {
            // Doubling as `Vec` does, but never allocating past the limit.
            let target = (body.len() + bytes.len())
                .max(body.capacity() * 2)
                .min(max_bytes);
            body.reserve_exact(target - body.len());
        }
        body.extend_from_slice(&bytes);
    }
    Ok(body)
}

/// A short description of a request failure for logs and `error` events: what failed, then the first specific
/// step and the innermost cause of the source chain (e.g. "could not connect: tcp connect error: Connection
/// refused (os error 111)", "could not connect: invalid peer certificate: UnknownIssuer"). The URL is dropped,
/// since a webhook URL may carry a token; request headers, where a key travels, are never part of the chain.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let kind = if e.is_connect() {
        "could not connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "body could not be read"
    } else {
        "request failed"
    };
    let mut causes: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        // hyper's client error only repeats the kind ("client error (Connect)"), and an `io::Error` wrapping
        // another error shows that error's text again.
        if !text.starts_with("client error (") && causes.last() != Some(&text) {
            causes.push(text);
        }
        next = cause.source();
    }
    let detail = match causes.as_slice() {
        [] => return kind.to_string(),
        [only] => only.clone(),
        [first, .., last] => format!("{first}: {last}"),
    };
    format!("{kind}: {}", truncate(&detail, 300))
}

/// The media type of a response without parameters, lowercased (`text/event-stream; charset=utf-8` ->
/// `text/event-stream`); empty when absent.
pub fn media_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// True for `application/json` and `application/<anything>+json`.
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json"
        || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

/// At most `max` characters of `s`, cut at a character boundary, with `…` when something was cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{is_json, truncate, SseEvent, SseParser};

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    fn parse_in_pieces(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(p.push(piece));
        }
        out.extend(p.finish());
        out
    }

    /// Mixed line endings, a comment, multi-line data, a non-ASCII payload, unknown fields, and a last frame
    /// with no closing blank line.
    const SAMPLE: &str = "data: {\"text\":\"Hé\"}\n\n\
        : keep-alive\r\n\
        event: chunk\r\n\
        id: 7\r\n\
        data: line one\r\n\
        data:line two\r\n\
        \r\n\
        data: {\"text\":\"日本 🚀\"}\n\
        retry: 10\n\
        \n\
        event: done\n\
        data: {\"done\":true}";

    fn sample_events() -> Vec<SseEvent> {
        vec![
            ev(None, "{\"text\":\"Hé\"}"),
            ev(Some("chunk"), "line one\nline two"),
            ev(None, "{\"text\":\"日本 🚀\"}"),
            ev(Some("done"), "{\"done\":true}"),
        ]
    }

    #[test]
    fn parses_the_sample_in_one_piece() {
        assert_eq!(parse_in_pieces(&[SAMPLE.as_bytes()]), sample_events());
    }

    #[test]
    fn split_at_every_byte_offset_gives_the_same_frames() {
        let bytes = SAMPLE.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(
                parse_in_pieces(&[a, b]),
                sample_events(),
                "split at byte {cut}"
            );
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_frames() {
        let pieces: Vec<&[u8]> = SAMPLE.as_bytes().chunks(1).collect();
        assert_eq!(parse_in_pieces(&pieces), sample_events());
    }

    #[test]
    fn frames_are_released_as_soon_as_they_are_complete() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: a\n").is_empty());
        assert_eq!(p.push(b"\ndata: b"), vec![ev(None, "a")]);
        assert!(p.push(b"\r").is_empty());
        // The `\n` completing `\r\n` must not count as a blank line.
        assert!(p.push(b"\n").is_empty());
        assert_eq!(p.push(b"\r\n"), vec![ev(None, "b")]);
        assert!(p.finish().is_empty());
    }

    #[test]
    fn lone_cr_ends_a_line_and_empty_data_lines_count() {
        assert_eq!(
            parse_in_pieces(&[b"data\rdata: x\r\r"]),
            vec![ev(None, "\nx")]
        );
    }

    #[test]
    fn comment_only_frames_and_blank_lines_dispatch_nothing() {
        assert!(parse_in_pieces(&[b": hello\n\n\n\n: bye\n"]).is_empty());
    }

    #[test]
    fn event_name_alone_is_a_frame() {
        assert_eq!(
            parse_in_pieces(&[b"event: done\n\n"]),
            vec![ev(Some("done"), "")]
        );
    }

    /// A long line arriving in many reads is scanned once: 20 MB in 4 KiB reads would take minutes if every
    /// read rescanned the buffered part of the line (quadratic), and takes milliseconds when it does not.
    /// Counted in bytes compared, not in time, so that the test cannot pass by luck of a fast machine.
    #[test]
    fn a_long_line_in_many_reads_is_scanned_in_linear_time() {
        let mut parser = SseParser::new();
        let read = vec![b'x'; 4096];
        let reads = 5_000;
        for _ in 0..reads {
            assert!(parser.push(&read).is_empty());
            // `scanned` covers the whole buffer after each read: the next read starts where this one ended.
            assert_eq!(parser.scanned, parser.buf.len());
        }
        let mut frames = parser.push(b"\n\n");
        assert!(frames.is_empty(), "not a field line: ignored");
        frames.extend(parser.push(b"data: done\n\n"));
        assert_eq!(frames, vec![ev(None, "done")]);
        assert!(parser.buf.is_empty());
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo", 2), "hé…");
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("text/event-stream"));
        assert!(!is_json(""));
    }
}
