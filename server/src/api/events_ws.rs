//! The session's event feed over a plain WebSocket, `GET /api/messaging/sessions/{sessionId}/ws`: the frames of
//! the SSE events stream, each as one text message `{"id": "<id>" | null, "event": "<name>", "data": {…}}`. Every
//! check the SSE route makes (credentials, the resume position, the session, a stream slot) happens before the
//! upgrade, so a refusal is an ordinary JSON error. Then: pings as keep-alives, a normal close (1000) after
//! `expired` or `deleted`, and a "going away" close (1001) when the feed ends otherwise (the server is stopping:
//! reconnect with the last id).

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use poem::http::header::HOST;
use poem::http::StatusCode;
use poem::web::websocket::{
    BoxWebSocketUpgraded, CloseCode, Message, WebSocket, WebSocketConfig, WebSocketStream,
};
use poem::web::Data;
use poem::{FromRequest, IntoResponse, Request, Response};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::registry::{MetaResponse, MetaResponses, Registry};
use poem_openapi::{ApiResponse, OpenApi};
use tokio_util::sync::CancellationToken;

use super::access::{Authorized, OwnSessionEvents};
use super::browser::ForeignOrigin;
use super::error::{ApiError, ErrorCode, EventsErrors, Failure};
use super::event_feed::{self, OpenFeed};
use super::event_wire;
use super::models::{SessionEventName, SessionStreamEvent};
use super::types::LastEventId;
use super::{ApiTags, StreamSettings};
use crate::service::SessionService;

/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest message (and frame) read from a client. Clients have nothing to say on this socket (what they
/// send is ignored): the library's default of 64 MiB would let one client make the server buffer that much.
const MAX_CLIENT_MESSAGE: usize = 4096;
/// At most this many frames are queued before the socket is written to, so that a long replay still streams.
const MAX_FRAMES_PER_WRITE: usize = 64;

pub struct EventsWsApi;

#[OpenApi(tag = "ApiTags::Sessions")]
impl EventsWsApi {
    /// The session's real-time events over a WebSocket: the same events as the SSE stream.
    #[oai(
        path = "/api/messaging/sessions/:sessionId/ws",
        method = "get",
        operation_id = "streamSessionEventsWebSocket"
    )]
    // An operation's inputs are its parameters, one extractor each, as poem-openapi documents them.
    #[allow(clippy::too_many_arguments)]
    async fn ws(
        &self,
        _auth: Authorized<OwnSessionEvents>,
        service: Data<&Arc<SessionService>>,
        settings: Data<&StreamSettings>,
        #[oai(name = "sessionId")] session_id: Path<String>,
        /// The id of the last event received; empty: none.
        #[oai(name = "Last-Event-ID")]
        last_event_id_header: Header<Option<LastEventId>>,
        /// The same as the `Last-Event-ID` header, for clients that cannot set headers (browsers' WebSocket).
        #[oai(name = "lastEventId")]
        last_event_id: Query<Option<LastEventId>>,
        request: &Request,
    ) -> Result<WebSocketUpgrade, Failure<EventsErrors>> {
        same_origin_or_allowed(request)?;
        let last = event_feed::resume_position(last_event_id.0, last_event_id_header.0)?;
        let websocket = WebSocket::from_request_without_body(request)
            .await
            .map_err(|_| not_an_upgrade())?
            .config(
                // The read buffer is allocated whole per socket, and the free part zeroed before each read: the
                // default (128 KiB) cost more memory and CPU per subscriber than the whole feed.
                WebSocketConfig::default()
                    .max_message_size(Some(MAX_CLIENT_MESSAGE))
                    .max_frame_size(Some(MAX_CLIENT_MESSAGE))
                    .read_buffer_size(MAX_CLIENT_MESSAGE),
            );
        let feed = event_feed::open(&service, &settings.slots, &session_id, last).await?;
        let keepalive = settings.keepalive;
        let stopping = service.stopping().clone();
        // The upgrade callback must be `Sync`, a feed (a stream the socket's task alone reads) is not: the
        // mutex is only ever taken once, by that callback.
        let feed = std::sync::Mutex::new(feed);
        let upgraded = websocket.on_upgrade(move |socket| {
            let feed = feed.into_inner().unwrap_or_else(|e| e.into_inner());
            pump(socket, feed, keepalive, stopping)
        });
        Ok(WebSocketUpgrade(upgraded.boxed()))
    }
}

/// Browsers open a WebSocket from any page, without CORS: the one thing that tells the server which page asks is
/// `Origin`. A page of another origin than the server's own must be one `CORS_ORIGIN` allows, as it must to
/// read the SSE stream; other clients send no `Origin` and are not concerned.
fn same_origin_or_allowed(request: &Request) -> Result<(), ApiError> {
    let Some(ForeignOrigin(origin)) = request.extensions().get::<ForeignOrigin>() else {
        return Ok(());
    };
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let host = request.headers().get(HOST).and_then(|h| h.to_str().ok());
    match (authority, host) {
        (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "Pages from origin '{origin}' may not open this WebSocket: the server's CORS_ORIGIN does not \
                 allow it"
            ),
        )),
    }
}

fn not_an_upgrade() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::ValidationError,
        "This route speaks WebSocket: send a GET with 'Connection: Upgrade', 'Upgrade: websocket', \
         'Sec-WebSocket-Version: 13' and a 'Sec-WebSocket-Key' (the events are also a text/event-stream at \
         /events)",
    )
}

/// Sends the feed's frames down the socket until the feed ends, the client leaves, or the server stops.
async fn pump(
    mut socket: WebSocketStream,
    feed: OpenFeed,
    keepalive: Duration,
    stopping: CancellationToken,
) {
    let mut frames = feed.frames();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let close = loop {
        tokio::select! {
            frame = frames.next() => match frame {
                Some(frame) => {
                    // The frames ready together (a reply's chunks, a message and its renewal) go out in one
                    // write: with many subscribers, a write per frame was most of the feed's cost.
                    let mut next = Some(frame);
                    let mut end = None;
                    let mut queued = 0;
                    while let Some(frame) = next.take() {
                        let last = matches!(frame.event, SessionEventName::Expired | SessionEventName::Deleted);
                        if !deliver(socket.feed(Message::Text(text(&frame))), &stopping).await {
                            return;
                        }
                        queued += 1;
                        if last {
                            let reason = format!("session {}", event_wire::event_name(frame.event));
                            end = Some(Message::close_with(CloseCode::Normal, reason));
                        } else if queued < MAX_FRAMES_PER_WRITE {
                            match frames.next().now_or_never() {
                                Some(Some(frame)) => next = Some(frame),
                                Some(None) => end = Some(going_away()),
                                None => {}
                            }
                        }
                    }
                    if !deliver(socket.flush(), &stopping).await {
                        return;
                    }
                    if let Some(close) = end {
                        break close;
                    }
                }
                // The feed ends on its own only when the server stops (or cannot read the store): the client
                // reconnects with the last id, here after a restart or to another instance.
                None => break going_away(),
            },
            _ = ping.tick() => {
                if !send(&mut socket, Message::Ping(Vec::new()), &stopping).await {
                    return;
                }
            }
            incoming = socket.next() => match incoming {
                // Pings are answered by the library; pongs and anything else a client sends mean nothing here.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Message::close(),
                Some(Ok(_)) => {}
            },
        }
    };
    // Bounded: a client that stopped reading must not keep the socket (and its slot) open.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = socket.send(close).await;
        // The closing handshake (RFC 6455 §7.1.1): the connection ends once the client's Close has come back.
        // Ending it at once reset a client that was still writing (a pong to a ping sent just before), and its
        // library then failed the read of the frames it had not yet read, the last event among them.
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        let _ = socket.close().await;
    })
    .await;
}

/// The close that asks the client to reconnect with its last event id.
fn going_away() -> Message {
    Message::close_with(CloseCode::Away, "reconnect with the last event id")
}

/// Sends one message; false once the client is gone or the server is stopping.
async fn send(
    socket: &mut WebSocketStream,
    message: Message,
    stopping: &CancellationToken,
) -> bool {
    deliver(socket.send(message), stopping).await
}

/// Waits for a write to the socket; false once the client is gone or the server is stopping (a client that does
/// not read would otherwise hold the write, and the shutdown, forever).
async fn deliver<E>(
    write: impl std::future::Future<Output = Result<(), E>>,
    stopping: &CancellationToken,
) -> bool {
    // Biased: a write the socket takes at once still goes out while stopping (the `reconnect` frame).
    tokio::select! {
        biased;
        sent = write => sent.is_ok(),
        _ = stopping.cancelled() => false,
    }
}

/// A frame as one WebSocket text message. `data` is already JSON text (the SSE frame's `data:`), embedded as is;
/// the id (digits) and the name (a fixed word) need no escaping.
fn text(frame: &SessionStreamEvent) -> String {
    let id = match frame.id {
        Some(id) => format!("\"{}\"", id.0),
        None => "null".to_string(),
    };
    let event = event_wire::event_name(frame.event);
    format!(
        "{{\"id\":{id},\"event\":\"{event}\",\"data\":{}}}",
        frame.data.0
    )
}

/// The success of the route: 101 Switching Protocols, then the socket.
pub struct WebSocketUpgrade(BoxWebSocketUpgraded);

impl IntoResponse for WebSocketUpgrade {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl ApiResponse for WebSocketUpgrade {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "Switching Protocols: the WebSocket of the session's events",
                status: Some(101),
                status_range: None,
                content: vec![],
                headers: vec![],
            }],
        }
    }

    fn register(_registry: &mut Registry) {}
}
