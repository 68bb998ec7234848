//! The session's event feed beyond the SSE basics of `messaging.rs`: the same feed over a WebSocket
//! (`websocket`), replay gaps once a session's oldest events are pruned (`replay_gap`), and the SDK's stream that
//! resumes by itself across a server restart (`resuming`). Nothing sleeps: events are awaited with timeouts.

mod replay_gap;
mod resuming;
mod websocket;

use agent_sessions::streams::{BoxedEvents, SessionEvent, SessionEventFrame};
use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::*;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A refused WebSocket handshake: the status, the JSON body, the headers.
pub type Refusal = (u16, Value, HeaderMap);

/// The WebSocket feed path of a session, with a query string if given.
pub fn ws_path(id: &str, query: &str) -> String {
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("/api/messaging/sessions/{id}/ws{query}")
}

/// Opens a WebSocket at `path` with these request headers; a refusal comes back as the HTTP answer it was.
pub async fn try_ws(
    ctx: &TestContext,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, Refusal> {
    let url = ctx.url(path).replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().expect("a WebSocket URL");
    for (name, value) in headers {
        request.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            value.parse().expect("a header value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, response)) => {
            assert_eq!(response.status().as_u16(), 101);
            Ok(socket)
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().unwrap_or_default();
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Err((status, body, headers))
        }
        Err(e) => panic!("the WebSocket handshake failed: {e}"),
    }
}

/// Opens the session's WebSocket feed (from `query`, e.g. `lastEventId=3`), which must be accepted.
pub async fn ws(ctx: &TestContext, id: &str, query: &str) -> Ws {
    match try_ws(ctx, &ws_path(id, query), &[]).await {
        Ok(socket) => socket,
        Err((status, body, _)) => panic!("the WebSocket was refused: {status} {body}"),
    }
}

/// The next message of the socket other than pings and pongs.
pub async fn ws_message(socket: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message arrives in time")
            .expect("the socket goes on")
            .expect("a well-formed message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

/// The next event message, as raw JSON: `{"id", "event", "data"}`.
pub async fn ws_json(socket: &mut Ws) -> Value {
    match ws_message(socket).await {
        Message::Text(text) => serde_json::from_str(&text).expect("a JSON text message"),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The next event message, typed as the SDK types the SSE stream's frames.
pub async fn ws_frame(socket: &mut Ws) -> SessionEventFrame {
    let json = ws_json(socket).await;
    assert!(
        json["data"].is_object(),
        "data is the payload itself: {json}"
    );
    let id = &json["id"];
    assert!(
        id.is_null() || id.as_str().is_some_and(|i| i.parse::<i64>().is_ok()),
        "{json}"
    );
    SessionEventFrame::from_websocket(&json.to_string()).expect("a well-formed event")
}

/// The close frame that ends the socket (after which it yields nothing more).
pub async fn ws_close(socket: &mut Ws) -> Option<CloseFrame> {
    match ws_message(socket).await {
        Message::Close(frame) => frame,
        other => panic!("expected the socket to close, got {other:?}"),
    }
}

/// Frames of a feed up to and including the stored agent reply.
pub async fn ws_until_reply(socket: &mut Ws) -> Vec<SessionEventFrame> {
    let mut frames = Vec::new();
    loop {
        let frame = ws_frame(socket).await;
        let done = is_reply(&frame);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// The same, from the SDK's SSE stream.
pub async fn sse_until_reply(
    events: &mut BoxedEvents<SessionEventFrame>,
) -> Vec<SessionEventFrame> {
    let mut frames = Vec::new();
    loop {
        let frame = next(events).await;
        let done = is_reply(&frame);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

fn is_reply(frame: &SessionEventFrame) -> bool {
    matches!(&frame.event, SessionEvent::Message(m) if m.is_agent)
}

/// The ids of the frames that have one, in order.
pub fn ids(frames: &[SessionEventFrame]) -> Vec<i64> {
    frames.iter().filter_map(|f| f.id).collect()
}

/// The contents of the stored messages among the frames, in order.
pub fn message_texts(frames: &[SessionEventFrame]) -> Vec<String> {
    let text = |f: &SessionEventFrame| match &f.event {
        SessionEvent::Message(m) => Some(m.content.clone()),
        _ => None,
    };
    frames.iter().filter_map(text).collect()
}
