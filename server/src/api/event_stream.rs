//! `SseStream<E>`: an event-stream response whose schema in the spec describes **one event** (`E`), as OpenAPI
//! 3.0 reads the `schema` of `text/event-stream` and as clients and fuzzers validate each event against it
//! (poem-openapi's own `EventStream` documents an array of events, which no event matches). The frames are
//! written here, each straight into the bytes hyper sends, with a comment as keep-alive: poem's SSE response
//! copies every frame through a reader and a 4 KiB buffer of its own per stream, the larger part of what an
//! open stream costs with thousands of them.

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use poem::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use poem::{Body, IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::ApiResponse;

/// One frame of an event stream.
pub struct SseFrame {
    /// `id:`, if any (what `Last-Event-ID` sends back).
    pub id: Option<i64>,
    /// `event:`; `message` is the default, and is left out.
    pub event: &'static str,
    /// `data:`, one line per line of it.
    pub data: String,
}

impl SseFrame {
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.data.len() + self.event.len() + 40);
        if let Some(id) = self.id {
            // Formatted into the frame's own buffer (BytesMut grows as needed): no string per frame.
            let _ = writeln!(out, "id: {id}");
        }
        if !self.event.is_empty() && self.event != "message" {
            out.put_slice(b"event: ");
            out.put_slice(self.event.as_bytes());
            out.put_u8(b'\n');
        }
        for line in self.data.lines() {
            out.put_slice(b"data: ");
            out.put_slice(line.as_bytes());
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
        out.freeze()
    }
}

/// The response: the frames of `E`, with a keep-alive comment after every `keep_alive` of silence.
pub struct SseStream<E> {
    frames: BoxStream<'static, SseFrame>,
    keep_alive: Duration,
    event: PhantomData<fn() -> E>,
}

impl<E: Send + 'static> SseStream<E> {
    pub fn new(
        events: BoxStream<'static, E>,
        keep_alive: Duration,
        frame: impl Fn(E) -> SseFrame + Send + 'static,
    ) -> Self {
        Self {
            frames: events.map(frame).boxed(),
            keep_alive,
            event: PhantomData,
        }
    }
}

const CONTENT: &str = "text/event-stream";

impl<E: Type + ToJSON> Payload for SseStream<E> {
    const CONTENT_TYPE: &'static str = CONTENT;

    fn schema_ref() -> MetaSchemaRef {
        E::schema_ref()
    }

    fn register(registry: &mut Registry) {
        E::register(registry);
    }
}

impl<E> IntoResponse for SseStream<E> {
    fn into_response(self) -> Response {
        let mut frames = self.frames;
        let mut keep_alive = tokio::time::interval_at(
            tokio::time::Instant::now() + self.keep_alive,
            self.keep_alive,
        );
        let comment = Bytes::from_static(b":\n\n");
        // Frames first; the keep-alive only when none is ready (as poem's SSE response does).
        let body = stream::poll_fn(move |cx| {
            if let Poll::Ready(frame) = frames.poll_next_unpin(cx) {
                return Poll::Ready(frame.map(|f| Ok::<_, std::io::Error>(f.encode())));
            }
            keep_alive.poll_tick(cx).map(|_| Some(Ok(comment.clone())))
        });
        Response::builder()
            .header(CONTENT_TYPE, CONTENT)
            // Proxies (nginx) must pass frames on as they come.
            .header("X-Accel-Buffering", "no")
            .header(CACHE_CONTROL, "no-cache")
            .body(Body::from_bytes_stream(body))
    }
}

impl<E: Type + ToJSON> ApiResponse for SseStream<E> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: CONTENT,
                    schema: E::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        E::register(registry);
    }
}

#[cfg(test)]
mod tests {
    use super::SseFrame;

    fn encoded(id: Option<i64>, event: &'static str, data: &str) -> String {
        let frame = SseFrame {
            id,
            event,
            data: data.to_string(),
        };
        String::from_utf8(frame.encode().to_vec()).unwrap()
    }

    #[test]
    fn frames_are_written_as_poem_writes_them() {
        let cases = [
            (Some(7), "chunk", "{\"a\":1}"),
            (None, "message", "{}"),
            (None, "reconnect", "two\nlines"),
            (Some(0), "", ""),
        ];
        for (id, event, data) in cases {
            let mut poem = poem::web::sse::Event::message(data).event_type(event);
            if let Some(id) = id {
                poem = poem.id(id.to_string());
            }
            assert_eq!(
                encoded(id, event, data),
                poem.to_string(),
                "{id:?} {event} {data:?}"
            );
        }
    }
}
