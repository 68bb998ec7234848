//! The Socket.IO payloads, in the shapes elizaOS 1.7 clients read (see `shared/design/realtime.md`): what a
//! client sends (handshake auth, room joins, messages) and what the server emits.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The message server every elizaOS 1.x client belongs to by default; this server has only that one.
pub const DEFAULT_SERVER_ID: &str = "00000000-0000-0000-0000-000000000000";

/// The `message` event's `type`: what the client asks for.
pub const ROOM_JOINING: u64 = 1;
pub const SEND_MESSAGE: u64 = 2;

/// The handshake's `auth` payload.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandshakeAuth {
    pub api_key: Option<String>,
    /// A session token (this server's addition): admits the socket to that session's channel only.
    pub token: Option<String>,
    pub entity_id: Option<String>,
}

/// The `message` event: `{type, payload}`.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: Value,
    #[serde(default)]
    pub payload: Value,
}

/// What a join or a send names: a channel (`roomId` is the older name of the same thing).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub channel_id: Option<String>,
    pub room_id: Option<String>,
}

impl Target {
    /// `channelId || roomId`, as the reference reads it; empty counts as missing.
    pub fn channel(&self) -> Option<&str> {
        [&self.channel_id, &self.room_id]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|c| !c.is_empty())
    }
}

/// `SEND_MESSAGE`'s payload.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outgoing {
    #[serde(flatten)]
    pub target: Target,
    #[serde(default)]
    pub message: Value,
    /// The client's own id for the message, echoed in the acknowledgement.
    pub message_id: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authenticated {
    pub entity_id: String,
    pub timestamp: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionEstablished {
    pub message: &'static str,
    pub socket_id: String,
}

/// `channel_joined` and `room_joined`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    pub message: String,
    pub channel_id: String,
    pub room_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Uuid>,
}

#[derive(Debug, Serialize)]
pub struct MessageError {
    pub error: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageAck {
    pub client_message_id: Value,
    pub message_id: Uuid,
    pub status: &'static str,
    pub channel_id: Uuid,
    pub room_id: Uuid,
}

/// An agent reply, to the session's channel.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageBroadcast {
    pub id: Uuid,
    pub sender_id: Uuid,
    pub sender_name: String,
    pub text: String,
    pub channel_id: Uuid,
    pub room_id: Uuid,
    pub server_id: &'static str,
    pub message_server_id: &'static str,
    /// Epoch milliseconds, a number (clients sort by it).
    pub created_at: i64,
    pub source: &'static str,
    pub session_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thought: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Value>,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamChunk {
    pub message_id: Uuid,
    pub chunk: String,
    pub index: u64,
    pub agent_id: Uuid,
    pub channel_id: Uuid,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamError {
    pub message_id: Uuid,
    pub channel_id: Uuid,
    pub agent_id: Uuid,
    pub error: String,
    pub partial_text: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Complete {
    pub channel_id: Uuid,
    pub server_id: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpirationWarning {
    pub session_id: Uuid,
    pub minutes_remaining: i64,
    pub expires_at: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Renewed {
    pub session_id: Uuid,
    pub expires_at: String,
}

/// `sessionExpired` and `sessionDeleted`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ended {
    pub session_id: Uuid,
}

/// `serverShutdown`: the server is stopping and closes the connection next; the client reconnects (elsewhere, or
/// here once the server is back) and joins its channels again.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownNotice {
    pub reason: &'static str,
    pub reconnect: bool,
}
