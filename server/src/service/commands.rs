//! The service's typed inputs: request bodies as the API decoded them (`api/decode.rs`).
//!
//! The contract orders its checks, and some come after a lookup: an unknown agent is reported before bad
//! metadata, an unknown session before an over-long message. So a command carries such a field as [`Checked`]:
//! decoded already, its error (if any) kept to be reported in its turn.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{AgentBackend, Attachment, EventFilter, SessionError, TimeoutConfigPatch};

/// A field decoded from a request, or the error it is to be refused with once the checks before it pass.
pub type Checked<T> = Result<T, SessionError>;

/// `createSession`.
#[derive(Debug)]
pub struct CreateSession {
    pub agent_id: Uuid,
    pub user_id: Uuid,
    /// Checked after the agent lookup.
    pub metadata: Checked<Map<String, Value>>,
    /// Checked after `metadata`.
    pub timeout: Checked<TimeoutConfigPatch>,
}

/// How the client wants the agent's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// 201 at once; the reply arrives through the events stream and the history.
    WebSocket,
    /// 201 once the agent has answered, with the reply.
    Http,
    /// 200 `text/event-stream` of the exchange.
    Sse,
}

/// `sendMessage`.
#[derive(Debug)]
pub struct SendMessage {
    pub transport: Transport,
    /// A string already; its length and characters are checked after the session lookup.
    pub content: Checked<String>,
    /// Checked after `content`.
    pub metadata: Checked<Map<String, Value>>,
    /// Checked after `metadata`.
    pub attachments: Checked<Option<Vec<Attachment>>>,
}

/// `createAgent`: every check comes before any lookup.
#[derive(Debug)]
pub struct NewAgent {
    pub name: String,
    pub backend: AgentBackend,
    pub session_defaults: TimeoutConfigPatch,
}

/// `createWebhook`: an http(s) URL (the egress policy is the service's to apply) and the event types wanted.
#[derive(Debug)]
pub struct NewWebhook {
    pub url: String,
    pub events: EventFilter,
}
