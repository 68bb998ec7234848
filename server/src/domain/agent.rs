//! Agents: who answers a session, with their own session defaults and the backend that produces replies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::timeout::TimeoutConfigPatch;

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub backend: AgentBackend,
    /// Per-agent session defaults; they sit between a session's own config and the global defaults.
    pub session_defaults: TimeoutConfigPatch,
    pub created_at: DateTime<Utc>,
}

/// How an agent produces replies. Stored as JSON, so adding a backend needs no migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AgentBackend {
    /// Built in: answers deterministically from the user's text.
    Echo,
    /// POSTs the exchange to `url` and uses the JSON reply.
    Webhook { url: String },
    /// Any OpenAI-compatible chat-completions endpoint.
    #[serde(rename = "openai")]
    OpenAi(OpenAiBackend),
}

/// Where and how an OpenAI-compatible backend is called.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenAiBackend {
    pub base_url: String,
    pub model: String,
    /// The name of the environment variable holding the API key (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}
