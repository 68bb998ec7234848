//! Messages of a session: what a user sent and what the agent answered, as stored in the session's history.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// One stored message. Its serde form is the API's `Message` (a test holds the two equal): events carry it so
/// in the store (see `event.rs`), and webhooks receive it so. The store's own fields (`seq`, `session_id`) are
/// left out, since the event's row has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Uuid,
    /// Store-assigned insertion order (0 until stored): the stable tie-break of equal `created_at`.
    #[serde(skip)]
    pub seq: i64,
    #[serde(skip)]
    pub session_id: Uuid,
    /// The user's id for user messages, the agent's id for replies.
    pub author_id: Uuid,
    pub is_agent: bool,
    pub content: String,
    /// Shared by the message's copies (the history cache's, each page's, each event's): it never changes.
    #[serde(default)]
    pub metadata: Arc<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Attachment>>,
    /// For agent replies: the user message answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<Uuid>,
    #[serde(with = "super::iso_format")]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "type")]
    pub kind: AttachmentKind,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentKind {
    Image,
    File,
    Audio,
    Video,
    Document,
}

/// An agent's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentReply {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
}

impl AgentReply {
    /// The metadata stored with the reply message (`thought`, `actions`, as the elizaOS SDK types declare).
    pub fn metadata(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(t) = &self.thought {
            m.insert("thought".into(), Value::String(t.clone()));
        }
        if let Some(a) = &self.actions {
            m.insert("actions".into(), Value::from(a.clone()));
        }
        m
    }
}
