//! Real-time session events and their JSON payloads (the wire format of the events stream).
//!
//! Payloads are built here, once, so that the events stream, the sse transport and the stored event log agree;
//! tests decode them with the SDK's generated types to keep them equal to the API schemas.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{iso, AgentReply, Message, Session};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A stored user or agent message.
    Message,
    /// A piece of an agent reply as it streams. Transient.
    Chunk,
    /// The session was renewed or its timeout changed.
    Session,
    /// The session entered its warning threshold.
    Warning,
    Expired,
    /// The session was deleted. Transient (its stored events go with it).
    Deleted,
    /// Internal: no reply could be produced for a message. Transient, and not shown to subscribers; it tells
    /// the request waiting for that reply (on whichever instance) that it failed.
    ReplyFailed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Chunk => "chunk",
            EventKind::Session => "session",
            EventKind::Warning => "warning",
            EventKind::Expired => "expired",
            EventKind::Deleted => "deleted",
            EventKind::ReplyFailed => "reply_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "message" => EventKind::Message,
            "chunk" => EventKind::Chunk,
            "session" => EventKind::Session,
            "warning" => EventKind::Warning,
            "expired" => EventKind::Expired,
            "deleted" => EventKind::Deleted,
            "reply_failed" => EventKind::ReplyFailed,
            _ => return None,
        })
    }

    /// Transient events are delivered live only: they get no id and are not replayed.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            EventKind::Chunk | EventKind::Deleted | EventKind::ReplyFailed
        )
    }

    /// Internal events are for the server's own waiters, not for the events stream.
    pub fn is_internal(self) -> bool {
        self == EventKind::ReplyFailed
    }

    /// After these, a session has nothing more to say.
    pub fn ends_stream(self) -> bool {
        matches!(self, EventKind::Expired | EventKind::Deleted)
    }
}

/// One event of a session. `seq` is its id, assigned by the store when it is persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    pub seq: Option<i64>,
    pub session_id: Uuid,
    pub kind: EventKind,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

impl SessionEvent {
    fn new(session_id: Uuid, kind: EventKind, data: Value, now: DateTime<Utc>) -> Self {
        Self {
            seq: None,
            session_id,
            kind,
            data,
            created_at: now,
        }
    }

    pub fn message(m: &Message) -> Self {
        Self::new(
            m.session_id,
            EventKind::Message,
            message_json(m),
            m.created_at,
        )
    }

    /// A reply chunk: `message_id` is the reply's future id, `in_reply_to` the user message it answers.
    pub fn chunk(
        session_id: Uuid,
        in_reply_to: Uuid,
        message_id: Uuid,
        chunk: &str,
        index: u64,
        now: DateTime<Utc>,
    ) -> Self {
        let mut data = chunk_json(message_id, chunk, index);
        data["inReplyTo"] = json!(in_reply_to);
        Self::new(session_id, EventKind::Chunk, data, now)
    }

    /// No reply for `in_reply_to`: `code` is `AGENT_TIMEOUT` or `AGENT_ERROR`.
    pub fn reply_failed(
        session_id: Uuid,
        in_reply_to: Uuid,
        error: &str,
        code: &str,
        now: DateTime<Utc>,
    ) -> Self {
        Self::new(
            session_id,
            EventKind::ReplyFailed,
            json!({ "inReplyTo": in_reply_to, "error": error, "code": code }),
            now,
        )
    }

    /// The user message whose reply this event is about (chunk, reply and failure events).
    pub fn in_reply_to(&self) -> Option<Uuid> {
        self.data
            .get("inReplyTo")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
    }

    /// `reason`: `renewed` (activity or explicit renewal), `activity` (activity without renewal),
    /// `timeout_updated`.
    pub fn session(s: &Session, reason: &str, now: DateTime<Utc>) -> Self {
        Self::new(
            s.id,
            EventKind::Session,
            json!({ "reason": reason, "session": session_json(s, now) }),
            now,
        )
    }

    pub fn warning(s: &Session, now: DateTime<Utc>) -> Self {
        Self::new(
            s.id,
            EventKind::Warning,
            json!({
                "sessionId": s.id,
                "expiresAt": iso(s.expires_at),
                "timeRemaining": s.time_remaining_ms(now),
                "warningThresholdMinutes": s.timeout.warning_threshold_minutes,
            }),
            now,
        )
    }

    pub fn expired(s: &Session, now: DateTime<Utc>) -> Self {
        Self::new(
            s.id,
            EventKind::Expired,
            json!({ "sessionId": s.id, "expiredAt": iso(s.expires_at) }),
            now,
        )
    }

    pub fn deleted(session_id: Uuid, now: DateTime<Utc>) -> Self {
        Self::new(
            session_id,
            EventKind::Deleted,
            json!({ "sessionId": session_id }),
            now,
        )
    }
}

/// A message as the API shows it (`Message` schema).
pub fn message_json(m: &Message) -> Value {
    let mut v = json!({
        "id": m.id,
        "content": m.content,
        "authorId": m.author_id,
        "isAgent": m.is_agent,
        "createdAt": iso(m.created_at),
        "metadata": m.metadata,
    });
    if let Some(a) = &m.attachments {
        v["attachments"] = serde_json::to_value(a).unwrap_or(Value::Null);
    }
    if let Some(r) = m.in_reply_to {
        v["inReplyTo"] = json!(r);
    }
    v
}

/// A reply chunk (`ReplyChunk` schema).
pub fn chunk_json(message_id: Uuid, chunk: &str, index: u64) -> Value {
    json!({ "messageId": message_id, "chunk": chunk, "index": index })
}

/// An agent reply (`AgentResponse` schema).
pub fn reply_json(r: &AgentReply) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// A session as the API shows it (`Session` schema), as of `now`.
pub fn session_json(s: &Session, now: DateTime<Utc>) -> Value {
    json!({
        "sessionId": s.id,
        "channelId": s.channel_id,
        "agentId": s.agent_id,
        "userId": s.user_id,
        "createdAt": iso(s.created_at),
        "lastActivity": iso(s.last_activity),
        "expiresAt": iso(s.expires_at),
        "metadata": s.metadata,
        "timeoutConfig": {
            "timeoutMinutes": minutes(s.timeout.timeout_minutes),
            "autoRenew": s.timeout.auto_renew,
            "maxDurationMinutes": minutes(s.timeout.max_duration_minutes),
            "warningThresholdMinutes": minutes(s.timeout.warning_threshold_minutes),
        },
        "renewalCount": s.renewal_count,
        "timeRemaining": s.time_remaining_ms(now),
        "isNearExpiration": s.is_near_expiration(now),
    })
}

/// Whole minutes as integers (`30`, not `30.0`), as the API prints them.
pub fn minutes(m: f64) -> Value {
    if m.fract() == 0.0 && m.abs() < 9.0e15 {
        Value::from(m as i64)
    } else {
        Value::from(m)
    }
}
