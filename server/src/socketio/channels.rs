//! What a connected socket asks for: joining a channel (`message` type 1, or event `"1"`) and sending a message
//! in a session's channel (`message` type 2, or event `"2"`), each checked against the socket's scope.

use std::sync::Arc;

use serde_json::{json, Value};
use socketioxide::extract::{Data, SocketRef, State};
use socketioxide::SocketIo;

use super::wire::{Envelope, Joined, MessageAck, MessageError, Outgoing, Target};
use super::wire::{ROOM_JOINING, SEND_MESSAGE};
use super::{Realtime, Scope};
use crate::domain::Session;

/// `message {type, payload}`: a join or a send, by its numeric type (or the same number as a string).
pub async fn on_message(
    s: SocketRef,
    io: SocketIo,
    Data(envelope): Data<Envelope>,
    State(realtime): State<Arc<Realtime>>,
) {
    let kind = match &envelope.kind {
        Value::Number(n) => n.as_u64(),
        Value::String(t) => t.parse().ok(),
        _ => None,
    };
    match kind {
        Some(ROOM_JOINING) => join(&realtime, &io, &s, envelope.payload).await,
        Some(SEND_MESSAGE) => send(&realtime, &s, envelope.payload).await,
        // Other message types of the reference (thinking indicators, room leaves) change nothing here.
        _ => {}
    }
}

/// Event `"1"`: a join with the payload itself.
pub async fn on_join(
    s: SocketRef,
    io: SocketIo,
    Data(payload): Data<Value>,
    State(realtime): State<Arc<Realtime>>,
) {
    join(&realtime, &io, &s, payload).await;
}

/// Event `"2"`: a send with the payload itself.
pub async fn on_send(
    s: SocketRef,
    Data(payload): Data<Value>,
    State(realtime): State<Arc<Realtime>>,
) {
    send(&realtime, &s, payload).await;
}

pub async fn on_disconnect(s: SocketRef, State(realtime): State<Arc<Realtime>>) {
    crate::metrics::socketio_connection(-1.0);
    realtime.bridge.forget(s.id);
}

fn refuse(s: &SocketRef, error: impl Into<String>) {
    let _ = s.emit(
        "messageError",
        &MessageError {
            error: error.into(),
        },
    );
}

/// The session behind `channel` that this socket may reach: `Ok(None)` for a channel that is no session's (an
/// operator may still join it), `Err` with the refusal to send otherwise.
async fn session_of(
    realtime: &Realtime,
    s: &SocketRef,
    channel: &str,
) -> Result<Option<Session>, String> {
    let scope = s.extensions.get::<Scope>().unwrap_or(Scope::Any);
    let session = match channel.parse() {
        Ok(channel_id) => realtime
            .service
            .store()
            .session_by_channel(channel_id)
            .await
            .map_err(|e| format!("The channel cannot be looked up right now: {e}"))?,
        Err(_) => None,
    };
    match (scope, &session) {
        (Scope::Any, _) => Ok(session),
        (Scope::Session(id), Some(found)) if found.id == id => Ok(session),
        (Scope::Session(_), _) => {
            Err("This session token admits only its own session's channel".to_string())
        }
    }
}

async fn join(realtime: &Realtime, io: &SocketIo, s: &SocketRef, payload: Value) {
    let target: Target = serde_json::from_value(payload).unwrap_or_default();
    let Some(channel) = target.channel().map(str::to_string) else {
        return refuse(s, "channelId is required for joining.");
    };
    let session = match session_of(realtime, s, &channel).await {
        Ok(session) => session,
        Err(refusal) => return refuse(s, refusal),
    };
    if let Some(session) = &session {
        realtime.bridge.watch(realtime, io, session, s.id);
    }
    s.join(channel.clone());
    let joined = Joined {
        message: format!("Socket {} successfully joined channel {channel}", s.id),
        channel_id: channel.clone(),
        room_id: channel,
        agent_id: session.map(|found| found.agent_id),
    };
    let _ = s.emit("channel_joined", &joined);
    let _ = s.emit("room_joined", &joined);
}

/// `SEND_MESSAGE` on a session's channel: `sendMessage` with the `websocket` transport (the reply comes to the
/// channel like any other), acknowledged to the sender.
async fn send(realtime: &Realtime, s: &SocketRef, payload: Value) {
    let outgoing: Outgoing = match serde_json::from_value(payload) {
        Ok(outgoing) => outgoing,
        Err(e) => return refuse(s, format!("Invalid message payload: {e}")),
    };
    let Some(channel) = outgoing.target.channel() else {
        return refuse(s, "channelId is required for sending.");
    };
    let session = match session_of(realtime, s, channel).await {
        Ok(Some(session)) => session,
        Ok(None) => return refuse(s, format!("No session has the channel '{channel}'")),
        Err(refusal) => return refuse(s, refusal),
    };
    let body = json!({
        "content": outgoing.message,
        "metadata": outgoing.metadata.unwrap_or_default(),
        "transport": "websocket",
    });
    let sent = match crate::api::decode::send_message(body) {
        Ok(command) => {
            realtime
                .service
                .send(&session.id.to_string(), command)
                .await
        }
        Err(e) => Err(e),
    };
    match sent {
        Ok(outcome) => {
            crate::metrics::message("socketio");
            let ack = MessageAck {
                client_message_id: outgoing.message_id.unwrap_or(Value::Null),
                message_id: outcome.user_message.id,
                status: "received_by_server_and_processing",
                channel_id: session.channel_id,
                room_id: session.channel_id,
            };
            let _ = s.emit("messageAck", &ack);
        }
        Err(e) => refuse(s, e.to_string()),
    }
}
