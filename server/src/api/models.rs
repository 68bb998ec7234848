//! Wire models: the JSON objects of the API as poem-openapi types, and their conversion from domain values.
//! Request models exist for the schema only; request bodies are validated by `domain::validate`.

use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::types::{JsonObject, Minutes, Timestamp};
use crate::domain::{Agent, AgentBackend, Session, TimeoutConfig, TimeoutConfigPatch};
use crate::service::{Health, SessionPage};

/// The effective timeout configuration of a session.
#[derive(Object, Debug, Clone)]
#[oai(rename = "TimeoutConfig", rename_all = "camelCase")]
pub struct TimeoutConfigBody {
    /// Inactivity timeout, in minutes.
    pub timeout_minutes: Minutes,
    /// Whether activity (messages, heartbeats) renews the session.
    pub auto_renew: bool,
    /// Hard limit on the session's lifetime, in minutes from creation.
    pub max_duration_minutes: Minutes,
    /// How long before expiry the session counts as near expiration, in minutes.
    pub warning_threshold_minutes: Minutes,
}

/// A partial timeout configuration: every field optional.
#[derive(Object, Debug, Clone, Default)]
#[oai(rename = "TimeoutConfigInput", rename_all = "camelCase")]
pub struct TimeoutConfigInput {
    #[oai(skip_serializing_if_is_none)]
    pub timeout_minutes: Option<Minutes>,
    #[oai(skip_serializing_if_is_none)]
    pub auto_renew: Option<bool>,
    #[oai(skip_serializing_if_is_none)]
    pub max_duration_minutes: Option<Minutes>,
    #[oai(skip_serializing_if_is_none)]
    pub warning_threshold_minutes: Option<Minutes>,
}

/// A conversation between one user and one agent, with its expiry state as of the response.
#[derive(Object, Debug, Clone)]
#[oai(rename = "Session", rename_all = "camelCase")]
pub struct SessionBody {
    pub session_id: Uuid,
    /// The conversation id; elizaOS clients join this room for real-time replies.
    pub channel_id: Uuid,
    pub agent_id: Uuid,
    pub user_id: Uuid,
    pub created_at: Timestamp,
    pub last_activity: Timestamp,
    pub expires_at: Timestamp,
    pub metadata: JsonObject,
    pub timeout_config: TimeoutConfigBody,
    /// Successful renewals so far.
    pub renewal_count: i64,
    /// Milliseconds until expiry, never negative.
    pub time_remaining: i64,
    /// True while the remaining time is within the warning threshold.
    pub is_near_expiration: bool,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "CreateSessionRequest", rename_all = "camelCase")]
pub struct CreateSessionRequest {
    /// ID of the agent to start a session with.
    pub agent_id: Uuid,
    /// ID of the user creating the session.
    pub user_id: Uuid,
    /// Additional metadata for the session (a JSON object of at most 10 240 bytes).
    pub metadata: Option<JsonObject>,
    /// Optional timeout configuration; out-of-range values are clamped.
    pub timeout_config: Option<TimeoutConfigInput>,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "SessionStats", rename_all = "camelCase")]
pub struct SessionStatsBody {
    pub total_sessions: u64,
    pub active_sessions: u64,
    pub expired_sessions: u64,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "SessionList", rename_all = "camelCase")]
pub struct SessionListBody {
    /// Active sessions, newest first.
    pub sessions: Vec<SessionBody>,
    /// Active sessions matching the filters, over all pages.
    pub total: u64,
    pub stats: SessionStatsBody,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "SessionsHealth", rename_all = "camelCase")]
pub struct HealthBody {
    /// Always `healthy` when the server can answer.
    pub status: String,
    pub active_sessions: u64,
    /// Active sessions inside their warning threshold.
    pub expiring_soon: u64,
    pub timestamp: Timestamp,
    /// Seconds since the server started.
    pub uptime: f64,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "DeleteResponse", rename_all = "camelCase")]
pub struct DeleteBody {
    pub success: bool,
    pub message: String,
}

#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename = "AgentBackendType", rename_all = "lowercase")]
pub enum AgentBackendType {
    Echo,
    Webhook,
    Openai,
}

/// How an agent produces replies: `echo` (built in), `webhook` (`url`), or `openai` (`baseUrl`, `model`,
/// optional `apiKeyEnv` naming the environment variable that holds the key, optional `systemPrompt`).
#[derive(Object, Debug, Clone)]
#[oai(rename = "AgentBackend", rename_all = "camelCase")]
pub struct AgentBackendBody {
    #[oai(rename = "type")]
    pub kind: AgentBackendType,
    #[oai(skip_serializing_if_is_none)]
    pub url: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub base_url: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub model: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub api_key_env: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub system_prompt: Option<String>,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "Agent", rename_all = "camelCase")]
pub struct AgentBody {
    pub id: Uuid,
    pub name: String,
    pub backend: AgentBackendBody,
    /// Session defaults of this agent, between a session's own config and the server's defaults.
    pub session_defaults: TimeoutConfigInput,
    pub created_at: Timestamp,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "CreateAgentRequest", rename_all = "camelCase")]
pub struct CreateAgentRequest {
    /// Display name, 1 to 100 characters.
    pub name: String,
    /// Defaults to `{"type": "echo"}`.
    pub backend: Option<AgentBackendBody>,
    pub session_defaults: Option<TimeoutConfigInput>,
}

#[derive(Object, Debug, Clone)]
#[oai(rename = "AgentList", rename_all = "camelCase")]
pub struct AgentListBody {
    pub agents: Vec<AgentBody>,
    pub total: u64,
}

impl From<TimeoutConfig> for TimeoutConfigBody {
    fn from(c: TimeoutConfig) -> Self {
        Self {
            timeout_minutes: Minutes(c.timeout_minutes),
            auto_renew: c.auto_renew,
            max_duration_minutes: Minutes(c.max_duration_minutes),
            warning_threshold_minutes: Minutes(c.warning_threshold_minutes),
        }
    }
}

impl From<TimeoutConfigPatch> for TimeoutConfigInput {
    fn from(p: TimeoutConfigPatch) -> Self {
        Self {
            timeout_minutes: p.timeout_minutes.map(Minutes),
            auto_renew: p.auto_renew,
            max_duration_minutes: p.max_duration_minutes.map(Minutes),
            warning_threshold_minutes: p.warning_threshold_minutes.map(Minutes),
        }
    }
}

impl SessionBody {
    pub fn new(s: &Session, now: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            session_id: s.id,
            channel_id: s.channel_id,
            agent_id: s.agent_id,
            user_id: s.user_id,
            created_at: Timestamp(s.created_at),
            last_activity: Timestamp(s.last_activity),
            expires_at: Timestamp(s.expires_at),
            metadata: JsonObject(s.metadata.clone()),
            timeout_config: s.timeout.into(),
            renewal_count: s.renewal_count,
            time_remaining: s.time_remaining_ms(now),
            is_near_expiration: s.is_near_expiration(now),
        }
    }
}

impl From<SessionPage> for SessionListBody {
    fn from(page: SessionPage) -> Self {
        Self {
            sessions: page
                .sessions
                .iter()
                .map(|s| SessionBody::new(s, page.now))
                .collect(),
            total: page.counts.active,
            stats: SessionStatsBody {
                total_sessions: page.counts.total,
                active_sessions: page.counts.active,
                expired_sessions: page.counts.total - page.counts.active,
            },
        }
    }
}

impl From<Health> for HealthBody {
    fn from(h: Health) -> Self {
        Self {
            status: "healthy".into(),
            active_sessions: h.counts.active,
            expiring_soon: h.counts.expiring_soon,
            timestamp: Timestamp(h.now),
            uptime: h.uptime_seconds,
        }
    }
}

impl From<&AgentBackend> for AgentBackendBody {
    fn from(b: &AgentBackend) -> Self {
        let mut body = AgentBackendBody {
            kind: AgentBackendType::Echo,
            url: None,
            base_url: None,
            model: None,
            api_key_env: None,
            system_prompt: None,
        };
        match b {
            AgentBackend::Echo => {}
            AgentBackend::Webhook { url } => {
                body.kind = AgentBackendType::Webhook;
                body.url = Some(url.clone());
            }
            AgentBackend::OpenAi {
                base_url,
                model,
                api_key_env,
                system_prompt,
            } => {
                body.kind = AgentBackendType::Openai;
                body.base_url = Some(base_url.clone());
                body.model = Some(model.clone());
                body.api_key_env = api_key_env.clone();
                body.system_prompt = system_prompt.clone();
            }
        }
        body
    }
}

impl From<&Agent> for AgentBody {
    fn from(a: &Agent) -> Self {
        Self {
            id: a.id,
            name: a.name.clone(),
            backend: (&a.backend).into(),
            session_defaults: a.session_defaults.into(),
            created_at: Timestamp(a.created_at),
        }
    }
}
