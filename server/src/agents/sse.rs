//! Streamed agent replies: a response body read as server-sent events (parsed by `eventsource-stream`), within
//! the reply size limit, frame by frame as they complete.

use bytes::Bytes;
use eventsource_stream::{Event, EventStream, EventStreamError};
use futures::stream::{self, Stream, StreamExt};

use super::response::{describe, BodyError};
use super::AgentError;

/// What to do after an event.
pub enum Flow {
    Continue,
    Stop,
}

/// Why the bytes of a stream stopped coming.
enum ReadError {
    Broken(reqwest::Error),
    TooLarge(usize),
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
    F: FnMut(Event) -> Result<Flow, AgentError>,
{
    let mut events = std::pin::pin!(EventStream::new(capped(response.bytes_stream(), max_bytes)));
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| match e {
            EventStreamError::Transport(ReadError::Broken(e)) => {
                AgentError::Failed(format!("{who} stream broke off: {}", describe(e)))
            }
            EventStreamError::Transport(ReadError::TooLarge(max)) => {
                BodyError::TooLarge(max).into_agent_error(who)
            }
            EventStreamError::Utf8(_) => {
                AgentError::Failed(format!("{who} stream is not valid UTF-8"))
            }
            EventStreamError::Parser(e) => {
                AgentError::Failed(format!("{who} stream is not an event stream: {e}"))
            }
        })?;
        if let Flow::Stop = on_event(event)? {
            break;
        }
    }
    Ok(())
}

/// The body's reads, counted against `max_bytes` before the parser sees them, then a blank line: servers that
/// close the connection right after their last frame often omit the blank line that completes it.
fn capped<S>(body: S, max_bytes: usize) -> impl Stream<Item = Result<Bytes, ReadError>>
where
    S: Stream<Item = reqwest::Result<Bytes>>,
{
    let mut left = max_bytes;
    body.map(move |read| {
        let bytes = read.map_err(ReadError::Broken)?;
        left = left
            .checked_sub(bytes.len())
            .ok_or(ReadError::TooLarge(max_bytes))?;
        Ok(bytes)
    })
    .chain(stream::once(async { Ok(Bytes::from_static(b"\n\n")) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Frames = Vec<(String, String)>;

    /// The frames `capped` + `EventStream` make of `pieces`, as reads of a body.
    async fn parse(pieces: &[&[u8]], max_bytes: usize) -> Result<Frames, String> {
        let body = stream::iter(
            pieces
                .iter()
                .map(|p| Ok::<_, reqwest::Error>(Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        );
        let mut events = std::pin::pin!(EventStream::new(capped(body, max_bytes)));
        let mut out = Vec::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(e) => out.push((e.event, e.data)),
                Err(EventStreamError::Transport(ReadError::TooLarge(max))) => {
                    return Err(format!("over {max}"))
                }
                Err(_) => return Err("other".into()),
            }
        }
        Ok(out)
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

    fn sample_frames() -> Frames {
        [
            ("message", "{\"text\":\"Hé\"}"),
            ("chunk", "line one\nline two"),
            ("message", "{\"text\":\"日本 🚀\"}"),
            ("done", "{\"done\":true}"),
        ]
        .map(|(e, d)| (e.to_string(), d.to_string()))
        .to_vec()
    }

    /// Whatever the reads are, inside a UTF-8 character or between `\r` and `\n`, the frames are the same.
    #[tokio::test]
    async fn split_at_every_byte_offset_gives_the_same_frames() {
        let bytes = SAMPLE.as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(
                parse(&[a, b], 1 << 20).await,
                Ok(sample_frames()),
                "split at {cut}"
            );
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse(&one_by_one, 1 << 20).await, Ok(sample_frames()));
    }

    #[tokio::test]
    async fn lone_cr_ends_a_line() {
        assert_eq!(
            parse(&[b"data\rdata: x\r\r"], 100).await,
            Ok(vec![("message".into(), "\nx".into())])
        );
    }

    /// The cap counts bytes as they arrive, before any parsing: a stream that passes it ends in an error,
    /// even in the middle of a line.
    #[tokio::test]
    async fn the_size_cap_ends_the_stream() {
        let line = vec![b'x'; 600];
        assert_eq!(
            parse(&[b"data: ", &line, &line], 1_000).await,
            Err("over 1000".into())
        );
        assert_eq!(
            parse(&[b"data: a\n\n"], 9).await,
            Ok(vec![("message".into(), "a".into())])
        );
    }
}
