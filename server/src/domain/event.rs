//! Real-time session events: what happened to a session, as typed payloads. The store keeps them (and sends them
//! between instances) in the serde form defined here; the API gives each its wire shape (`api/models/events.rs`).
//!
//! The stored form keeps the field names the event log used before payloads were typed, so that logs written
//! then still read back.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{AgentReply, Message, Session, TimeoutConfig};

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

/// A piece of an agent reply as it streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyChunk {
    /// The id the reply will be stored under.
    pub message_id: Uuid,
    pub chunk: String,
    /// 0, 1, 2, ... within one reply.
    pub index: u64,
    /// The user message being answered.
    pub in_reply_to: Uuid,
}

/// Why a session's state changed (the `session` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionChange {
    /// Activity or an explicit renewal renewed it.
    Renewed,
    /// Its timeout configuration changed.
    TimeoutUpdated,
}

impl SessionChange {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionChange::Renewed => "renewed",
            SessionChange::TimeoutUpdated => "timeout_updated",
        }
    }
}

/// What a `session` event shows of the session: its public state at the event's instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSnapshot {
    #[serde(rename = "sessionId")]
    pub id: Uuid,
    pub channel_id: Uuid,
    pub agent_id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_activity: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub metadata: Arc<Map<String, Value>>,
    pub timeout_config: TimeoutConfig,
    pub renewal_count: i64,
}

impl SessionSnapshot {
    pub fn of(s: &Session) -> Self {
        Self {
            id: s.id,
            channel_id: s.channel_id,
            agent_id: s.agent_id,
            user_id: s.user_id,
            created_at: s.created_at,
            last_activity: s.last_activity,
            expires_at: s.expires_at,
            metadata: s.metadata.clone(),
            timeout_config: s.timeout,
            renewal_count: s.renewal_count,
        }
    }
}

/// Why no reply came for a message (an agent's failure, as every instance hears of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code")]
pub enum ReplyFailure {
    /// The agent failed; the reason is for logs and for the client, and never holds a secret.
    #[serde(rename = "AGENT_ERROR")]
    Failed {
        #[serde(rename = "error")]
        reason: String,
    },
    /// The agent did not answer within the agent timeout.
    #[serde(rename = "AGENT_TIMEOUT")]
    TimedOut {
        /// The timeout, in milliseconds.
        #[serde(rename = "afterMs", default)]
        after_ms: u64,
    },
}

/// What an event says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum EventPayload {
    /// A stored user message or agent reply.
    Message(Message),
    Chunk(ReplyChunk),
    Session {
        reason: SessionChange,
        session: SessionSnapshot,
    },
    #[serde(rename_all = "camelCase")]
    Warning {
        expires_at: DateTime<Utc>,
        warning_threshold_minutes: f64,
    },
    #[serde(rename_all = "camelCase")]
    Expired {
        expired_at: DateTime<Utc>,
    },
    Deleted,
    #[serde(rename_all = "camelCase")]
    ReplyFailed {
        in_reply_to: Uuid,
        #[serde(flatten)]
        failure: ReplyFailure,
    },
}

impl EventPayload {
    pub fn kind(&self) -> EventKind {
        match self {
            EventPayload::Message(_) => EventKind::Message,
            EventPayload::Chunk(_) => EventKind::Chunk,
            EventPayload::Session { .. } => EventKind::Session,
            EventPayload::Warning { .. } => EventKind::Warning,
            EventPayload::Expired { .. } => EventKind::Expired,
            EventPayload::Deleted => EventKind::Deleted,
            EventPayload::ReplyFailed { .. } => EventKind::ReplyFailed,
        }
    }
}

/// What a subscriber resuming after event `requested` is told when the session's log no longer holds every
/// event after it (the oldest are pruned, see `StoreOptions::events_per_session`): the events in between are
/// gone, and the stream goes on from `oldest_available`. Never stored: it is about one subscriber's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayGap {
    pub requested: i64,
    /// The oldest event the log still holds; None when it holds none after `requested`.
    pub oldest_available: Option<i64>,
}

/// One event of a session. `seq` is its id, assigned by the store when it is persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEvent {
    pub seq: Option<i64>,
    pub session_id: Uuid,
    pub at: DateTime<Utc>,
    pub payload: EventPayload,
    /// Delivered live only, whatever its kind (see [`SessionEvent::heartbeat_renewal`]).
    live_only: bool,
    rendered: Rendered,
}

/// The event as a transport writes it, made by the first subscriber that needs it and reused by the others,
/// who share the event: a session's event goes to every one of its subscribers, and rendering it for each cost
/// more than sending it. Opaque here (the API layer decides what it keeps); a copy of the event starts empty,
/// and two events compare equal whatever they hold here.
#[derive(Default)]
pub struct Rendered(OnceLock<Box<dyn Any + Send + Sync>>);

impl Rendered {
    /// The kept rendering, made by `render` if there is none yet; None if another type was kept first.
    pub fn get_or_render<T: Any + Send + Sync>(&self, render: impl FnOnce() -> T) -> Option<&T> {
        self.0.get_or_init(|| Box::new(render())).downcast_ref()
    }
}

impl Clone for Rendered {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Rendered {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rendered")
    }
}

impl SessionEvent {
    fn new(session_id: Uuid, payload: EventPayload, at: DateTime<Utc>) -> Self {
        Self {
            seq: None,
            session_id,
            at,
            payload,
            live_only: false,
            rendered: Rendered::default(),
        }
    }

    /// The event's rendering for subscribers, kept with it (see [`Rendered`]).
    pub fn rendered(&self) -> &Rendered {
        &self.rendered
    }

    pub fn kind(&self) -> EventKind {
        self.payload.kind()
    }

    /// Whether the event is delivered live only: no id, not stored, not replayed.
    pub fn is_transient(&self) -> bool {
        self.live_only || self.kind().is_transient()
    }

    /// The `session` event (reason `renewed`) of a heartbeat that renewed the session: live only. Clients
    /// heartbeat every few seconds, and storing each renewal made a heartbeat several writes instead of one,
    /// while a client that reconnects needs the session's state (which getSession and the next stored event
    /// give), not the history of its renewals. Renewals by a message or by renewSession are stored as before.
    pub fn heartbeat_renewal(s: &Session, now: DateTime<Utc>) -> Self {
        Self {
            live_only: true,
            ..Self::session(s, SessionChange::Renewed, now)
        }
    }

    pub fn message(m: &Message) -> Self {
        // The store's insertion order is not part of what the event says (it does not travel with it).
        let message = Message {
            seq: 0,
            ..m.clone()
        };
        Self::new(m.session_id, EventPayload::Message(message), m.created_at)
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
        let chunk = ReplyChunk {
            message_id,
            chunk: chunk.to_string(),
            index,
            in_reply_to,
        };
        Self::new(session_id, EventPayload::Chunk(chunk), now)
    }

    /// No reply for `in_reply_to`.
    pub fn reply_failed(
        session_id: Uuid,
        in_reply_to: Uuid,
        failure: ReplyFailure,
        now: DateTime<Utc>,
    ) -> Self {
        let payload = EventPayload::ReplyFailed {
            in_reply_to,
            failure,
        };
        Self::new(session_id, payload, now)
    }

    /// The user message whose reply this event is about (chunk, reply and failure events).
    pub fn in_reply_to(&self) -> Option<Uuid> {
        match &self.payload {
            EventPayload::Message(m) => m.in_reply_to,
            EventPayload::Chunk(c) => Some(c.in_reply_to),
            EventPayload::ReplyFailed { in_reply_to, .. } => Some(*in_reply_to),
            _ => None,
        }
    }

    pub fn session(s: &Session, reason: SessionChange, now: DateTime<Utc>) -> Self {
        let payload = EventPayload::Session {
            reason,
            session: SessionSnapshot::of(s),
        };
        Self::new(s.id, payload, now)
    }

    pub fn warning(s: &Session, now: DateTime<Utc>) -> Self {
        let payload = EventPayload::Warning {
            expires_at: s.expires_at,
            warning_threshold_minutes: s.timeout.warning_threshold_minutes,
        };
        Self::new(s.id, payload, now)
    }

    pub fn expired(s: &Session, now: DateTime<Utc>) -> Self {
        let payload = EventPayload::Expired {
            expired_at: s.expires_at,
        };
        Self::new(s.id, payload, now)
    }

    pub fn deleted(session_id: Uuid, now: DateTime<Utc>) -> Self {
        Self::new(session_id, EventPayload::Deleted, now)
    }

    /// The `data` the store keeps for this event (its `kind` goes beside it).
    pub fn stored_data(&self) -> Value {
        match serde_json::to_value(&self.payload) {
            Ok(Value::Object(mut tagged)) => tagged.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// [`stored_data`](Self::stored_data) as JSON text, written straight from the payload rather than through a
    /// `Value` (a tree of allocations the writer thread built and dropped for every stored event): the payload
    /// serialised with its tag, `{"kind":"…","data":…}`, and its `data` member cut out (`null` when it has none).
    pub fn stored_json(&self) -> String {
        let Ok(tagged) = serde_json::to_string(&self.payload) else {
            return "null".to_owned();
        };
        match tagged
            .strip_prefix(r#"{"kind":""#)
            .and_then(|rest| rest.strip_prefix(self.kind().as_str()))
            .and_then(|rest| rest.strip_prefix(r#"","data":"#))
            .and_then(|rest| rest.strip_suffix('}'))
        {
            Some(data) => data.to_owned(),
            None => "null".to_owned(),
        }
    }

    /// An event as the store read it back: `kind` and `data` as `stored_data` wrote them.
    pub fn from_stored(
        seq: Option<i64>,
        session_id: Uuid,
        kind: &str,
        data: Value,
        at: DateTime<Utc>,
    ) -> Result<Self, String> {
        let tagged = serde_json::json!({ "kind": kind, "data": data });
        let mut payload: EventPayload =
            serde_json::from_value(tagged).map_err(|e| format!("event {kind}: {e}"))?;
        // A message's session is the event's; the stored form leaves it out.
        if let EventPayload::Message(m) = &mut payload {
            m.session_id = session_id;
        }
        Ok(Self {
            seq,
            ..Self::new(session_id, payload, at)
        })
    }
}

impl AgentReply {
    /// The reply a stored agent message carries: its text, and the `thought` and `actions` of its metadata.
    pub fn of(message: &Message) -> Self {
        let text = |v: &Value| v.as_str().map(str::to_string);
        Self {
            text: message.content.clone(),
            thought: message.metadata.get("thought").and_then(text),
            actions: message
                .metadata
                .get("actions")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(text).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{TimeoutConfigPatch, TimeoutPolicy};
    use serde_json::json;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_735_689_600_000 + ms).unwrap()
    }

    #[test]
    fn an_event_is_rendered_once_and_a_copy_starts_unrendered() {
        let event = SessionEvent::message(&message());
        let mut renders = 0;
        let first = event
            .rendered()
            .get_or_render(|| {
                renders += 1;
                "frame".to_string()
            })
            .cloned();
        let again = event
            .rendered()
            .get_or_render(|| {
                renders += 1;
                "other".to_string()
            })
            .cloned();
        assert_eq!(first.as_deref(), Some("frame"));
        assert_eq!(again.as_deref(), Some("frame"));
        assert_eq!(renders, 1);
        // Another type than the one kept is not a rendering of it.
        assert_eq!(event.rendered().get_or_render(|| 7_u32), None);
        let copy = event.clone();
        assert_eq!(copy, event);
        let copy_frame = copy.rendered().get_or_render(|| "fresh".to_string());
        assert_eq!(copy_frame.map(String::as_str), Some("fresh"));
    }

    fn message() -> Message {
        Message {
            id: Uuid::new_v4(),
            seq: 0,
            session_id: Uuid::new_v4(),
            author_id: Uuid::new_v4(),
            is_agent: true,
            content: "hi".into(),
            metadata: json!({"thought": "t", "actions": ["A"]})
                .as_object()
                .unwrap()
                .clone()
                .into(),
            attachments: None,
            in_reply_to: Some(Uuid::new_v4()),
            created_at: at(7),
        }
    }

    /// Every payload survives the store's round trip unchanged.
    #[test]
    fn payloads_round_trip_through_the_stored_form() {
        let m = message();
        let s = Session::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            Map::new(),
            TimeoutPolicy::default().resolve(
                &TimeoutConfigPatch::default(),
                &TimeoutConfigPatch::default(),
            ),
            at(0),
        );
        let events = [
            SessionEvent::message(&m),
            SessionEvent::chunk(s.id, m.id, Uuid::new_v4(), "pie", 2, at(1)),
            SessionEvent::session(&s, SessionChange::Renewed, at(2)),
            SessionEvent::warning(&s, at(3)),
            SessionEvent::expired(&s, at(4)),
            SessionEvent::deleted(s.id, at(5)),
            SessionEvent::reply_failed(
                s.id,
                m.id,
                ReplyFailure::TimedOut { after_ms: 60_000 },
                at(6),
            ),
        ];
        for event in events {
            let back = SessionEvent::from_stored(
                Some(3),
                event.session_id,
                event.kind().as_str(),
                event.stored_data(),
                event.at,
            )
            .unwrap();
            assert_eq!(back.payload, event.payload);
            let text: serde_json::Value = serde_json::from_str(&event.stored_json()).unwrap();
            assert_eq!(text, event.stored_data(), "{:?}", event.kind());
        }
    }

    /// An event log written before payloads were typed (the wire's JSON) still reads back.
    #[test]
    fn the_earlier_stored_form_reads_back() {
        let session = Uuid::new_v4();
        let old_message = json!({
            "id": Uuid::new_v4(), "content": "hello", "authorId": Uuid::new_v4(), "isAgent": false,
            "createdAt": "2025-01-01T00:00:00.007Z", "metadata": {}
        });
        let e = SessionEvent::from_stored(Some(1), session, "message", old_message, at(0)).unwrap();
        let EventPayload::Message(m) = e.payload else {
            panic!("a message")
        };
        assert_eq!((m.content.as_str(), m.session_id), ("hello", session));
        let old_session = json!({"reason": "renewed", "session": {
            "sessionId": session, "channelId": session, "agentId": session, "userId": session,
            "createdAt": "2025-01-01T00:00:00.000Z", "lastActivity": "2025-01-01T00:00:00.000Z",
            "expiresAt": "2025-01-01T00:30:00.000Z", "metadata": {},
            "timeoutConfig": {"timeoutMinutes": 30, "autoRenew": true, "maxDurationMinutes": 720,
                              "warningThresholdMinutes": 5},
            "renewalCount": 1, "timeRemaining": 1800000, "isNearExpiration": false
        }});
        let e = SessionEvent::from_stored(Some(2), session, "session", old_session, at(0)).unwrap();
        assert!(matches!(
            e.payload,
            EventPayload::Session {
                reason: SessionChange::Renewed,
                ..
            }
        ));
        let old_warning = json!({"sessionId": session, "expiresAt": "2025-01-01T00:30:00.000Z",
                                 "timeRemaining": 300000, "warningThresholdMinutes": 5});
        assert!(SessionEvent::from_stored(Some(3), session, "warning", old_warning, at(0)).is_ok());
        assert!(SessionEvent::from_stored(Some(4), session, "nonsense", json!({}), at(0)).is_err());
    }

    #[test]
    fn a_reply_is_read_from_its_message() {
        let reply = AgentReply::of(&message());
        assert_eq!(reply.text, "hi");
        assert_eq!(reply.thought.as_deref(), Some("t"));
        assert_eq!(reply.actions, Some(vec!["A".to_string()]));
    }
}
