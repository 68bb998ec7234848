//! Hand-written, typed SDK methods for the two event-stream responses that progenitor cannot type: the `sse`
//! transport of `sendMessage` (`Client::send_message_stream`) and the session events stream
//! (`Client::session_events`). Both return a `Stream` of typed events parsed from `text/event-stream`. The
//! same typed events read the WebSocket feed's messages (`SessionEventFrame::from_websocket`).

use std::pin::Pin;

use eventsource_stream::{EventStream, EventStreamError};
use futures::stream::{Stream, StreamExt};
use progenitor_client::{ClientInfo, Error, ResponseValue};

use crate::types;
use crate::Client;

/// One event of the `sse` transport of `sendMessage`, its payload typed by the event's name.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeEvent {
    /// The stored user message (always first).
    UserMessage(types::Message),
    Chunk(types::ReplyChunk),
    /// The stored reply (always last, unless `Error`).
    Done(types::ExchangeDone),
    /// The agent failed or timed out (always last).
    Error(types::ExchangeError),
}

/// One event of a session's events stream, its payload typed by the event's name.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A stored message, the user's or the agent's.
    Message(types::Message),
    /// A piece of an agent reply as it streams (transient: no id, never replayed).
    Chunk(types::ReplyChunk),
    /// The session was renewed, or its timeout changed.
    Session(types::SessionChange),
    /// The session entered its warning threshold.
    Warning(types::ExpiryWarning),
    /// The session expired (the stream's last event).
    Expired(types::SessionExpired),
    /// The session was deleted (the stream's last event).
    Deleted(types::SessionDeleted),
    /// The stream resumed from an id older than the session's kept events: the events in between are gone
    /// (refetch the history); the next events are the oldest kept. No id of its own.
    ReplayGap(types::ReplayGap),
    /// The server is stopping and ends the stream after this event: reconnect with the last id (to another
    /// instance, or to this one once it is back; `session_events_resuming` does). No id of its own.
    Reconnect(types::ReconnectNotice),
}

impl SessionEvent {
    /// Whether the session has nothing more to say after this event (`expired`, `deleted`).
    pub fn ends_stream(&self) -> bool {
        matches!(self, SessionEvent::Expired(_) | SessionEvent::Deleted(_))
    }
}

/// A session event with its id (None for transient `chunk` and `deleted` events, and for `replay-gap` and `reconnect`). Pass the
/// last id seen to `session_events` to resume without gaps (or use `session_events_resuming`, which does).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEventFrame {
    pub id: Option<i64>,
    pub event: SessionEvent,
}

impl SessionEventFrame {
    /// A text message of the WebSocket events feed (`GET /api/messaging/sessions/{sessionId}/ws`,
    /// `{"id", "event", "data"}`), as the frame the SSE stream would have delivered.
    pub fn from_websocket(text: &str) -> EventResult<Self> {
        #[derive(serde::Deserialize)]
        struct WebSocketEvent {
            id: Option<String>,
            event: String,
            data: serde_json::Value,
        }
        let message: WebSocketEvent = decode("websocket message", text)?;
        let data = message.data.to_string();
        Ok(Self {
            id: message.id.and_then(|id| id.parse().ok()),
            event: session_event(&message.event, &data)?,
        })
    }
}

/// A failure while reading a stream that had started.
#[derive(Debug)]
pub enum StreamError {
    /// The connection broke.
    Transport(reqwest::Error),
    /// A frame did not have the documented shape.
    Malformed {
        event: String,
        data: String,
        reason: String,
    },
    /// A resuming stream could not reconnect: the server refused (the session expired or was deleted meanwhile,
    /// the credentials no longer do), or it stayed unreachable for every attempt. The stream ends after it.
    Reconnect(Box<Error<types::ErrorResponse>>),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Transport(e) => write!(f, "stream broken: {e}"),
            StreamError::Malformed { event, reason, .. } => {
                write!(f, "malformed '{event}' event: {reason}")
            }
            StreamError::Reconnect(e) => write!(f, "could not reconnect the stream: {e}"),
        }
    }
}

impl std::error::Error for StreamError {}

pub type EventResult<T> = Result<T, StreamError>;
pub type BoxedEvents<T> = Pin<Box<dyn Stream<Item = EventResult<T>> + Send>>;

impl Client {
    /// `sendMessage` with the `sse` transport: the exchange as a stream that always ends with `Done` or `Error`.
    /// (The generated `send_message` covers the `websocket` and `http` transports.)
    pub async fn send_message_stream(
        &self,
        session_id: &str,
        mut body: types::SendMessageRequest,
    ) -> Result<BoxedEvents<ExchangeEvent>, Error<types::ErrorResponse>> {
        body.transport = Some(types::TransportType::Sse);
        body.mode = None;
        let url = format!(
            "{}/api/messaging/sessions/{}/messages",
            self.baseurl(),
            encode(session_id)
        );
        let response = self
            .client()
            .post(url)
            .timeout(STREAM_TIMEOUT)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body)
            .send()
            .await
            .map_err(Error::CommunicationError)?;
        let frames = frames(checked(response).await?);
        Ok(frames
            .map(|frame| frame.and_then(|(_, event, data)| exchange_event(&event, &data)))
            .boxed())
    }

    /// The session's events stream, over one connection (see `session_events_resuming` for one that reconnects).
    /// With `last_event_id`, every stored event after it comes first (after a `ReplayGap` if some of them are
    /// no longer stored).
    pub async fn session_events(
        &self,
        session_id: &str,
        last_event_id: Option<i64>,
    ) -> Result<BoxedEvents<SessionEventFrame>, Error<types::ErrorResponse>> {
        let url = format!(
            "{}/api/messaging/sessions/{}/events",
            self.baseurl(),
            encode(session_id)
        );
        let mut request = self
            .client()
            .get(url)
            .timeout(STREAM_TIMEOUT)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.map_err(Error::CommunicationError)?;
        let frames = frames(checked(response).await?);
        Ok(frames
            .map(|frame| {
                frame.and_then(|(id, event, data)| {
                    Ok(SessionEventFrame {
                        id: id.and_then(|i| i.parse().ok()),
                        event: session_event(&event, &data)?,
                    })
                })
            })
            .boxed())
    }
}

/// A stream lasts as long as its session: the client's 15 s total timeout would cut it, so streams replace it
/// with this (the server's keep-alives show a live connection; a dead one fails on read).
const STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

fn encode(segment: &str) -> String {
    progenitor_client::encode_path(segment)
}

/// A 2xx response, or the API's error as the generated methods report it.
async fn checked(
    response: reqwest::Response,
) -> Result<reqwest::Response, Error<types::ErrorResponse>> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status.is_client_error() || status.is_server_error() {
        return Err(
            match ResponseValue::<types::ErrorResponse>::from_response::<types::ErrorResponse>(
                response,
            )
            .await
            {
                Ok(body) => Error::ErrorResponse(body),
                Err(e) => e,
            },
        );
    }
    Err(Error::UnexpectedResponse(response))
}

fn decode<T: serde::de::DeserializeOwned>(event: &str, data: &str) -> EventResult<T> {
    serde_json::from_str(data).map_err(|e| StreamError::Malformed {
        event: event.to_string(),
        data: data.to_string(),
        reason: e.to_string(),
    })
}

fn exchange_event(event: &str, data: &str) -> EventResult<ExchangeEvent> {
    use types::MessageStreamEventName as Name;
    Ok(match name::<Name>(event, data)? {
        Name::UserMessage => ExchangeEvent::UserMessage(decode(event, data)?),
        Name::Chunk => ExchangeEvent::Chunk(decode(event, data)?),
        Name::Done => ExchangeEvent::Done(decode(event, data)?),
        Name::Error => ExchangeEvent::Error(decode(event, data)?),
    })
}

fn session_event(event: &str, data: &str) -> EventResult<SessionEvent> {
    use types::SessionEventName as Name;
    Ok(match name::<Name>(event, data)? {
        Name::Message => SessionEvent::Message(decode(event, data)?),
        Name::Chunk => SessionEvent::Chunk(decode(event, data)?),
        Name::Session => SessionEvent::Session(decode(event, data)?),
        Name::Warning => SessionEvent::Warning(decode(event, data)?),
        Name::Expired => SessionEvent::Expired(decode(event, data)?),
        Name::Deleted => SessionEvent::Deleted(decode(event, data)?),
        Name::ReplayGap => SessionEvent::ReplayGap(decode(event, data)?),
        Name::Reconnect => SessionEvent::Reconnect(decode(event, data)?),
    })
}

/// The event's name as the contract lists it.
fn name<N: std::str::FromStr>(event: &str, data: &str) -> EventResult<N> {
    event.parse().map_err(|_| StreamError::Malformed {
        event: event.to_string(),
        data: data.to_string(),
        reason: "unknown event name".into(),
    })
}

/// `(id, event, data)` of each frame of a `text/event-stream` body (parsed by `eventsource-stream`); comments
/// (keep-alives) are skipped. `id` is the id the frame itself carried: EventSource parsers report the last id
/// seen on every frame, and the server's ids only grow, so a frame carried one when it differs from the last.
fn frames(
    response: reqwest::Response,
) -> impl Stream<Item = EventResult<(Option<String>, String, String)>> + Send {
    let mut last_id = String::new();
    EventStream::new(response.bytes_stream()).map(move |frame| {
        let frame = frame.map_err(|e| match e {
            EventStreamError::Transport(e) => StreamError::Transport(e),
            other => StreamError::Malformed {
                event: String::new(),
                data: String::new(),
                reason: other.to_string(),
            },
        })?;
        let id = (frame.id != last_id).then(|| frame.id.clone());
        last_id = frame.id;
        Ok((id, frame.event, frame.data))
    })
}
