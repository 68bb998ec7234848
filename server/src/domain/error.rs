//! `SessionError`: everything the service layer can refuse or fail with, independent of HTTP; `StoreError`, what
//! persistence can fail with, whichever backend.

use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Bad input; `details` points at the offending field when there is one.
    #[error("{message}")]
    Invalid {
        message: String,
        details: Option<Value>,
    },
    #[error("Session '{0}' not found")]
    SessionNotFound(String),
    #[error("Session '{id}' expired at {}", crate::domain::iso(*.expired_at))]
    SessionExpired {
        id: String,
        expired_at: DateTime<Utc>,
    },
    #[error("Agent with ID '{0}' not found")]
    AgentNotFound(String),
    #[error("Webhook '{0}' not found")]
    WebhookNotFound(String),
    #[error("Failed to renew session '{id}': {reason}")]
    RenewalFailed { id: String, reason: String },
    #[error("storage failure")]
    Store(#[from] StoreError),
    /// The agent still has active sessions, so it is not deleted.
    #[error("Agent '{id}' still has {sessions} active session(s): it can be deleted once they have ended or been deleted")]
    AgentInUse { id: String, sessions: u64 },
    /// A quota of the operator's (sessions per user, messages per session) is reached; the text says which.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The session already has `limit` messages waiting for the agent.
    #[error("The session already has {limit} unanswered messages: wait for the agent's replies before sending more")]
    TooManyPending { limit: u32 },
    /// An idempotency key already names a request with a different body: a key stands for one request.
    #[error("Idempotency-Key '{key}' was already used for a different request: use a new key for a new request")]
    IdempotencyKeyReused { key: String },
    /// The first request under this idempotency key is still being served, longer than a retry waits for it.
    #[error(
        "A request with Idempotency-Key '{key}' is still in progress: retry once it has finished"
    )]
    IdempotencyKeyInUse { key: String },
    /// The first request under this idempotency key was an `sse` exchange, which cannot be answered again: its
    /// message is stored and its reply goes to the history and the events stream.
    #[error("Idempotency-Key '{key}' already started an sse exchange: its message '{user_message_id}' is stored, and its reply is in the history and on the events stream")]
    IdempotencyKeyStreamed {
        key: String,
        user_message_id: String,
    },
    /// The server cannot do its job at all right now (e.g. the store takes no writes); health reports it.
    #[error("The server cannot store anything right now: {0}")]
    Unavailable(String),
}

impl SessionError {
    pub fn invalid(message: impl Into<String>) -> Self {
        SessionError::Invalid {
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid_field(message: impl Into<String>, field: &str) -> Self {
        SessionError::Invalid {
            message: message.into(),
            details: Some(serde_json::json!({ "field": field })),
        }
    }
}

/// What persistence can say went wrong. Cloneable because one failed group commit answers many callers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot serve this right now, but may soon: it cannot be reached, is shutting down or
    /// restarting, takes no writes (a full disk, a read-only file or standby), or no connection came free in
    /// time. The API answers 503 with `Retry-After`; nothing was stored.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend reported (I/O, corruption, a bad row).
    #[error("store backend error: {0}")]
    Backend(String),
}
