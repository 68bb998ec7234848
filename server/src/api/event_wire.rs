//! The wire shapes of events: the JSON `data` of each frame of the events stream (SSE and WebSocket alike) and
//! of the `sse` transport, built from the domain's typed payloads with the same models as the REST answers.

use serde::Serialize;
use uuid::Uuid;

use super::models::{
    AgentResponseBody, MessageBody, SessionBody, SessionEventName, SessionStreamEvent,
};
use super::types::{EventData, EventId, Minutes, Timestamp};
use crate::domain::session::remaining_ms;
use crate::domain::{AgentReply, EventPayload, Message, ReplayGap, SessionChange, SessionEvent};
use crate::service::FeedItem;

/// `session`: the session's state after a renewal or a timeout change.
#[derive(Serialize)]
struct SessionChanged {
    reason: SessionChange,
    session: SessionBody,
}

/// `warning`: the session entered its warning threshold.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Warning {
    session_id: Uuid,
    expires_at: Timestamp,
    time_remaining: i64,
    warning_threshold_minutes: Minutes,
}

/// `expired`: the session timed out.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Expired {
    session_id: Uuid,
    expired_at: Timestamp,
}

/// `deleted`: the session was deleted.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Deleted {
    session_id: Uuid,
}

/// `replay-gap`: events after `requested` are no longer stored; the stream goes on from `oldestAvailable`.
/// Ids as the frames' own ids are written: decimal text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Gap {
    requested: String,
    oldest_available: Option<String>,
}

/// `reconnect`: the server is stopping; the stream ends after this frame.
#[derive(Serialize)]
struct Reconnect {
    reason: &'static str,
}

/// `done` of the `sse` transport: the stored reply and the reply it carries.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Done {
    message: MessageBody,
    agent_response: AgentResponseBody,
}

/// `error` of the `sse` transport: what the `http` transport would answer.
#[derive(Serialize)]
struct Failed<'a> {
    error: &'a str,
    code: &'a str,
}

/// A subscriber's feed item as a frame of the events stream (SSE or WebSocket); None for internal events,
/// which subscribers never see.
pub fn feed_frame(item: &FeedItem) -> Option<SessionStreamEvent> {
    match item {
        FeedItem::Event(e) => {
            // Rendered once per event for all its subscribers.
            let (event, data) = match e.rendered().get_or_render(|| session_frame(e)) {
                Some(frame) => frame.clone()?,
                None => session_frame(e)?,
            };
            Some(SessionStreamEvent {
                id: e.seq.map(EventId),
                event,
                data,
            })
        }
        FeedItem::Gap(gap) => Some(SessionStreamEvent {
            id: None,
            event: SessionEventName::ReplayGap,
            data: replay_gap(gap),
        }),
        FeedItem::Stopping => Some(SessionStreamEvent {
            id: None,
            event: SessionEventName::Reconnect,
            data: EventData::of(&Reconnect {
                reason: "server shutting down",
            }),
        }),
    }
}

/// The name of an event on the wire (the `event:` of an SSE frame, `event` of a WebSocket message).
pub fn event_name(name: SessionEventName) -> &'static str {
    match name {
        SessionEventName::Message => "message",
        SessionEventName::Chunk => "chunk",
        SessionEventName::Session => "session",
        SessionEventName::Warning => "warning",
        SessionEventName::Expired => "expired",
        SessionEventName::Deleted => "deleted",
        SessionEventName::ReplayGap => "replay-gap",
        SessionEventName::Reconnect => "reconnect",
    }
}

fn replay_gap(gap: &ReplayGap) -> EventData {
    EventData::of(&Gap {
        requested: gap.requested.to_string(),
        oldest_available: gap.oldest_available.map(|id| id.to_string()),
    })
}

/// An event as subscribers see it: its name and data; None for internal events, which they never see.
fn session_frame(e: &SessionEvent) -> Option<(SessionEventName, EventData)> {
    let at = e.at;
    let frame = match &e.payload {
        EventPayload::Message(m) => (SessionEventName::Message, message(m)),
        EventPayload::Chunk(c) => (SessionEventName::Chunk, EventData::of(c)),
        EventPayload::Session { reason, session } => {
            let session = SessionBody::from_snapshot(session.clone(), at);
            let reason = *reason;
            (
                SessionEventName::Session,
                EventData::of(&SessionChanged { reason, session }),
            )
        }
        EventPayload::Warning {
            expires_at,
            warning_threshold_minutes,
        } => (
            SessionEventName::Warning,
            EventData::of(&Warning {
                session_id: e.session_id,
                expires_at: Timestamp(*expires_at),
                time_remaining: remaining_ms(*expires_at, at),
                warning_threshold_minutes: Minutes(*warning_threshold_minutes),
            }),
        ),
        EventPayload::Expired { expired_at } => (
            SessionEventName::Expired,
            EventData::of(&Expired {
                session_id: e.session_id,
                expired_at: Timestamp(*expired_at),
            }),
        ),
        EventPayload::Deleted => (
            SessionEventName::Deleted,
            EventData::of(&Deleted {
                session_id: e.session_id,
            }),
        ),
        EventPayload::ReplyFailed { .. } => return None,
    };
    Some(frame)
}

/// A stored message (`Message` schema).
pub fn message(m: &Message) -> EventData {
    EventData::of(&MessageBody::from(m))
}

/// `done`: the stored reply message and the reply it carries.
pub fn done(message: &Message, reply: &AgentReply) -> EventData {
    EventData::of(&Done {
        message: message.into(),
        agent_response: reply.into(),
    })
}

/// `error`: an error message and its code.
pub fn failed(error: &str, code: &str) -> EventData {
    EventData::of(&Failed { error, code })
}
