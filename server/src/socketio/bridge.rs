//! From session events to Socket.IO rooms: while sockets here watch a session's channel, one task follows that
//! session's committed events (from this instance or, through the store's fan-out, any other) and emits them to
//! the channel's room in the shapes elizaOS clients read. No cross-node adapter: every instance already hears
//! every event, and each emits to its own sockets.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{to_value, Value};
use socketioxide::socket::Sid;
use socketioxide::SocketIo;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::AbortHandle;
use uuid::Uuid;

use super::wire::{
    Complete, Ended, ExpirationWarning, MessageBroadcast, Renewed, StreamChunk, StreamError,
    DEFAULT_SERVER_ID,
};
use super::Realtime;
use crate::domain::{
    iso, EventPayload, Message, ReplyFailure, Session, SessionChange, SessionEvent,
};
use crate::store::LiveEvents;

/// The channels watched here, each with the sockets that joined it and the task that follows its session.
#[derive(Default)]
pub struct Bridge {
    channels: Arc<Mutex<HashMap<Uuid, Watch>>>,
}

struct Watch {
    sockets: HashSet<Sid>,
    task: AbortHandle,
}

impl Bridge {
    /// Makes sure `session`'s events reach its channel's room while `socket` is connected. Subscribes before
    /// returning, so that nothing committed after the join is missed.
    pub fn watch(&self, realtime: &Realtime, io: &SocketIo, session: &Session, socket: Sid) {
        let mut channels = lock(&self.channels);
        let watch = channels.entry(session.channel_id).or_insert_with(|| {
            let events = realtime.service.store().subscribe(session.id);
            let follower = Follower {
                io: io.clone(),
                session: session.clone(),
                agent_name: String::new(),
                partial: HashMap::new(),
            };
            let channels = self.channels.clone();
            let agent = realtime.service.clone();
            let channel_id = session.channel_id;
            let task = tokio::spawn(async move {
                let mut follower = follower;
                follower.agent_name = match agent
                    .get_agent(&follower.session.agent_id.to_string())
                    .await
                {
                    Ok(a) => a.name,
                    Err(_) => "Agent".to_string(),
                };
                follower.follow(events).await;
                lock(&channels).remove(&channel_id);
            });
            Watch {
                sockets: HashSet::new(),
                task: task.abort_handle(),
            }
        });
        watch.sockets.insert(socket);
    }

    /// A socket left: channels nobody here watches any more stop being followed.
    pub fn forget(&self, socket: Sid) {
        lock(&self.channels).retain(|_, watch| {
            watch.sockets.remove(&socket);
            if watch.sockets.is_empty() {
                watch.task.abort();
            }
            !watch.sockets.is_empty()
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Follows one session for its channel's room.
struct Follower {
    io: SocketIo,
    session: Session,
    agent_name: String,
    /// Replies being streamed, by the user message they answer: the reply's id and its text so far.
    partial: HashMap<Uuid, (Uuid, String)>,
}

impl Follower {
    async fn follow(&mut self, mut events: LiveEvents) {
        loop {
            match events.recv().await {
                Ok(event) => {
                    for (name, data) in self.translate(&event) {
                        let room = self.session.channel_id.to_string();
                        let _ = self.io.to(room).emit(name, &data).await;
                    }
                    if event.kind().ends_stream() {
                        return;
                    }
                }
                // A burst beyond the channel's buffer: what was missed is in the history; go on with what comes.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// The Socket.IO events one session event makes, in order.
    fn translate(&mut self, event: &SessionEvent) -> Vec<(&'static str, Value)> {
        let channel_id = self.session.channel_id;
        let agent_id = self.session.agent_id;
        let session_id = self.session.id;
        let json = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
        match &event.payload {
            EventPayload::Chunk(c) => {
                let (_, text) = self
                    .partial
                    .entry(c.in_reply_to)
                    .or_insert_with(|| (c.message_id, String::new()));
                text.push_str(&c.chunk);
                let chunk = StreamChunk {
                    message_id: c.message_id,
                    chunk: c.chunk.clone(),
                    index: c.index,
                    agent_id,
                    channel_id,
                };
                vec![("messageStreamChunk", json(to_value(chunk)))]
            }
            EventPayload::Message(m) if m.is_agent => {
                if let Some(answered) = m.in_reply_to {
                    self.partial.remove(&answered);
                }
                let complete = Complete {
                    channel_id,
                    server_id: DEFAULT_SERVER_ID,
                };
                vec![
                    ("messageBroadcast", json(to_value(self.broadcast(m)))),
                    ("messageComplete", json(to_value(complete))),
                ]
            }
            EventPayload::ReplyFailed {
                in_reply_to,
                failure,
            } => {
                let (message_id, partial_text) = self
                    .partial
                    .remove(in_reply_to)
                    .unwrap_or((*in_reply_to, String::new()));
                let error = match failure {
                    ReplyFailure::Failed { reason } => reason.clone(),
                    ReplyFailure::TimedOut { after_ms } => {
                        format!("The agent did not answer within {after_ms} ms")
                    }
                };
                let failed = StreamError {
                    message_id,
                    channel_id,
                    agent_id,
                    error,
                    partial_text,
                };
                vec![("messageStreamError", json(to_value(failed)))]
            }
            EventPayload::Session {
                reason: SessionChange::Renewed,
                session,
            } => {
                let renewed = Renewed {
                    session_id,
                    expires_at: iso(session.expires_at),
                };
                vec![("sessionRenewed", json(to_value(renewed)))]
            }
            EventPayload::Warning { expires_at, .. } => {
                let warning = ExpirationWarning {
                    session_id,
                    minutes_remaining: minutes_until(event.at, *expires_at),
                    expires_at: iso(*expires_at),
                };
                vec![("sessionExpirationWarning", json(to_value(warning)))]
            }
            EventPayload::Expired { .. } => {
                vec![("sessionExpired", json(to_value(Ended { session_id })))]
            }
            EventPayload::Deleted => {
                vec![("sessionDeleted", json(to_value(Ended { session_id })))]
            }
            // The user's own message is not broadcast (the reference does not); timeout changes have no
            // Socket.IO event.
            EventPayload::Message(_) | EventPayload::Session { .. } => Vec::new(),
        }
    }

    fn broadcast(&self, m: &Message) -> MessageBroadcast {
        let field = |name: &str| m.metadata.get(name).cloned();
        MessageBroadcast {
            id: m.id,
            sender_id: self.session.agent_id,
            sender_name: self.agent_name.clone(),
            text: m.content.clone(),
            channel_id: self.session.channel_id,
            room_id: self.session.channel_id,
            server_id: DEFAULT_SERVER_ID,
            message_server_id: DEFAULT_SERVER_ID,
            created_at: m.created_at.timestamp_millis(),
            source: "agent_response",
            session_id: self.session.id,
            thought: field("thought"),
            actions: field("actions"),
            attachments: m.attachments.as_ref().and_then(|a| to_value(a).ok()),
            metadata: serde_json::Map::clone(&m.metadata),
        }
    }
}

/// Whole minutes left, rounded up (a warning at 4 min 30 s says 5).
fn minutes_until(now: DateTime<Utc>, then: DateTime<Utc>) -> i64 {
    let ms = (then - now).num_milliseconds().max(0);
    (ms + 59_999) / 60_000
}
